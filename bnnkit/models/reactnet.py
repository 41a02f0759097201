"""ReActNet's models (METHODS.md §4.3-4.5): ReActNet-A (`reactnet`, liuzechun/ReActNet mobilenet/),
ReActNet on Bi-Real-Net (`birealnet18`, `birealnet34`, resnet/) and, for quick CIFAR runs, a
`birealnet20` of the same blocks at ResNet-20's size (not a published model).

Module names are the authors' (feature.i.move11, binary_3x3, ...), so their state_dicts load as they
are. PyTorch's default init everywhere; the global pooling takes any input side divisible by 32 (Q10).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..nn.layers import conv_bn
from ..methods import Method
from ..methods.reactnet import LearnableBias, rprelu
from . import register_model

REACTNET_A_CHANNELS = (32, 64, 128, 128, 256, 256, 512, 512, 512, 512, 512, 512, 1024, 1024)


class FirstConv(nn.Module):
    """The real stem: BN(conv 3x3, stride 2); no activation (Q13)."""

    def __init__(self, out_channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, out_channels, 3, 2, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.bn1(self.conv1(x))


class ReActBlock(nn.Module):
    """h = RPReLU1(BN1(conv3x3(sign(x + move11))) + R(x)), R = 2x2 average pool when strided;
    b = sign(h + move21); out = RPReLU2(BN2(conv1x1(b)) + h), or, when the block doubles its channels,
    RPReLU2(concat[BN2_1(down1(b)) + h, BN2_2(down2(b)) + h]): two 1x1 convs, the same h in both halves."""

    def __init__(self, method: Method, inplanes: int, planes: int, stride: int) -> None:
        super().__init__()
        if planes not in (inplanes, 2 * inplanes):
            raise ValueError(f"a ReActNet-A block keeps or doubles its channels, not {inplanes} -> {planes}")
        self.move11 = LearnableBias(inplanes)
        self.binary_3x3 = method.conv(inplanes, inplanes, 3, stride, 1, flat_reference=True)
        self.bn1 = nn.BatchNorm2d(inplanes)
        self.move12, self.prelu1, self.move13 = LearnableBias(inplanes), nn.PReLU(inplanes), LearnableBias(inplanes)
        self.move21 = LearnableBias(inplanes)
        self.doubles = planes == 2 * inplanes
        if self.doubles:
            self.binary_pw_down1 = method.conv(inplanes, inplanes, 1, flat_reference=True)
            self.binary_pw_down2 = method.conv(inplanes, inplanes, 1, flat_reference=True)
            self.bn2_1, self.bn2_2 = nn.BatchNorm2d(inplanes), nn.BatchNorm2d(inplanes)
        else:
            self.binary_pw = method.conv(inplanes, planes, 1, flat_reference=True)
            self.bn2 = nn.BatchNorm2d(planes)
        self.move22, self.prelu2, self.move23 = LearnableBias(planes), nn.PReLU(planes), LearnableBias(planes)
        self.pooling = nn.AvgPool2d(2, 2) if stride == 2 else None

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x if self.pooling is None else self.pooling(x)
        h = rprelu(conv_bn(self.binary_3x3, self.bn1, self.move11(x), shortcut), self.move12, self.prelu1, self.move13)
        b = self.move21(h)
        if self.doubles:
            out = torch.cat([conv_bn(self.binary_pw_down1, self.bn2_1, b, h),
                             conv_bn(self.binary_pw_down2, self.bn2_2, b, h)], dim=1)
        else:
            out = conv_bn(self.binary_pw, self.bn2, b, h)
        return rprelu(out, self.move22, self.prelu2, self.move23)


class ReActNetA(nn.Module):
    def __init__(self, method: Method, num_classes: int, channels: tuple[int, ...]) -> None:
        super().__init__()
        blocks: list[nn.Module] = [FirstConv(channels[0])]
        for i in range(1, len(channels)):
            # the authors' rule: stride 2 wherever the width changes, except into 64 channels
            stride = 2 if channels[i - 1] != channels[i] and channels[i] != 64 else 1
            blocks.append(ReActBlock(method, channels[i - 1], channels[i], stride))
        self.feature = nn.ModuleList(blocks)
        self.pool1 = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels[-1], num_classes)

    def forward(self, x: Tensor) -> Tensor:
        for block in self.feature:
            x = block(x)
        return self.fc(self.pool1(x).flatten(1))


class BiRealBlock(nn.Module):
    """out = RPReLU(BN1(conv3x3(sign(x + move0))) + D(x)), D = identity or, where the block changes
    the resolution or width, BN(real conv1x1(avgpool 2x2(x))) with no sign (Q13)."""

    def __init__(self, method: Method, inplanes: int, planes: int, stride: int, downsample: nn.Module | None) -> None:
        super().__init__()
        self.move0 = LearnableBias(inplanes)
        self.binary_conv = method.conv(inplanes, planes, 3, stride, 1)
        self.bn1 = nn.BatchNorm2d(planes)
        self.move1, self.prelu, self.move2 = LearnableBias(planes), nn.PReLU(planes), LearnableBias(planes)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        return rprelu(conv_bn(self.binary_conv, self.bn1, self.move0(x), shortcut), self.move1, self.prelu, self.move2)


class BiRealNet(nn.Module):
    """ImageNet stem BN(conv 7x7, stride 2) then max-pool (no activation, Q13), or the CIFAR stem
    BN(conv 3x3); then layers of Bi-Real blocks; global average pool and fc."""

    def __init__(self, method: Method, num_classes: int, layers: tuple[int, ...], planes: tuple[int, ...],
                 cifar: bool = False) -> None:
        super().__init__()
        width = planes[0]
        if cifar:
            self.conv1 = nn.Conv2d(3, width, 3, 1, 1, bias=False)
        else:
            self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.maxpool = None if cifar else nn.MaxPool2d(3, 2, 1)
        for i, (p, depth) in enumerate(zip(planes, layers)):
            stride = 1 if i == 0 else 2
            blocks = []
            for b in range(depth):
                down = None
                if b == 0 and (stride != 1 or width != p):
                    down = nn.Sequential(nn.AvgPool2d(2, stride), nn.Conv2d(width, p, 1, bias=False), nn.BatchNorm2d(p))
                blocks.append(BiRealBlock(method, width, p, stride if b == 0 else 1, down))
                width = p
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.num_layers = len(planes)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.bn1(self.conv1(x))
        if self.maxpool is not None:
            x = self.maxpool(x)
        for i in range(self.num_layers):
            x = getattr(self, f"layer{i + 1}")(x)
        return self.fc(self.avgpool(x).flatten(1))


def _setting(method: Method, name: str, default: tuple[int, ...]) -> tuple[int, ...]:
    value = method.settings.get(name)
    return default if value is None else tuple(int(v) for v in value)


@register_model("imagenet", architectures=("reactnet",))
def reactnet(method: Method, num_classes: int) -> nn.Module:
    """ReActNet-A: the MobileNet-like network of 13 binary blocks (setting `stage_out_channel`: the
    authors' 14 widths, default the published ones)."""
    return ReActNetA(method, num_classes, _setting(method, "stage_out_channel", REACTNET_A_CHANNELS))


@register_model("imagenet", architectures=("reactnet",))
def birealnet18(method: Method, num_classes: int) -> nn.Module:
    """ReActNet on Bi-Real-Net ResNet-18: 16 one-conv blocks (setting `layers`, default [4, 4, 4, 4])."""
    return BiRealNet(method, num_classes, _setting(method, "layers", (4, 4, 4, 4)), (64, 128, 256, 512))


@register_model("imagenet", architectures=("reactnet",))
def birealnet34(method: Method, num_classes: int) -> nn.Module:
    """ReActNet on Bi-Real-Net ResNet-34 (setting `layers`, default [6, 8, 12, 6]); defined, never
    trained by the authors' train.py (Q16)."""
    return BiRealNet(method, num_classes, _setting(method, "layers", (6, 8, 12, 6)), (64, 128, 256, 512))


@register_model("cifar", architectures=("reactnet",))
def birealnet20(method: Method, num_classes: int) -> nn.Module:
    """Not a published model: ReActNet's Bi-Real blocks at ResNet-20's size for CIFAR (a 3x3 stem,
    widths 16/32/64, 6 one-conv blocks each: ResNet-20's 18 binary convs), for quick runs."""
    return BiRealNet(method, num_classes, _setting(method, "layers", (6, 6, 6)), (16, 32, 64), cifar=True)
