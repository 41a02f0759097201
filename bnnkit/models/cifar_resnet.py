"""CIFAR ResNets: resnet20_1w1a (Bi-Real blocks), resnet20_1w32a (BiPer) and resnet18_1w1a with
its A/B/C widths (REFERENCE.md §2.1-2.2)."""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from ..nn.layers import conv_bn
from ..methods import Method
from . import register_model
from ._common import PadShortcut, activation, kaiming_normal_convs


class BiRealBlock(nn.Module):
    """A residual around each binary conv: y1 = BN1(conv1(x)) + S(x); z = act1(y1);
    y2 = BN2(conv2(z)) + z; out = act2(y2)."""

    def __init__(self, method: Method, in_planes: int, planes: int, stride: int, act: str, binary_input: bool) -> None:
        super().__init__()
        self.conv1 = method.conv(in_planes, planes, 3, stride, 1, binary_input=binary_input)
        self.bn1 = nn.BatchNorm2d(planes)
        self.nonlinear1 = _act(act, planes)
        self.conv2 = method.conv(planes, planes, 3, 1, 1, binary_input=binary_input)
        self.bn2 = nn.BatchNorm2d(planes)
        self.nonlinear2 = _act(act, planes)
        self.shortcut = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = PadShortcut(planes // 4, "slice" if act == "siman" else "avg")

    def forward(self, x: Tensor) -> Tensor:
        z = conv_bn(self.conv1, self.bn1, x, self.shortcut(x), self.nonlinear1)
        return conv_bn(self.conv2, self.bn2, z, z, self.nonlinear2)


def _act(kind: str, channels: int) -> nn.Module:
    return nn.ReLU(inplace=True) if kind == "relu" else activation(kind, channels)


class ResNet20(nn.Module):
    def __init__(self, method: Method, num_classes: int, act: str, binary_input: bool = True) -> None:
        super().__init__()
        stem_act = "relu" if act in ("siman", "relu") else act
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.nonlinear = _act(stem_act, 16)
        in_planes = 16
        for i, planes in enumerate((16, 32, 64)):
            blocks = []
            for b in range(3):
                stride = 2 if (i > 0 and b == 0) else 1
                blocks.append(BiRealBlock(method, in_planes, planes, stride, act, binary_input))
                in_planes = planes
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.bn2 = nn.BatchNorm1d(64)
        self.linear = nn.Linear(64, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        out = self.nonlinear(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.avg_pool2d(out, out.size(3)).flatten(1)
        return self.linear(self.bn2(out))


@register_model("cifar")
def resnet20_1w1a(method: Method, num_classes: int) -> nn.Module:
    model = ResNet20(method, num_classes, method.architecture)
    kaiming_normal_convs(model, linear=method.architecture == "siman")
    return model


@register_model("cifar", architectures=("biper",))
def resnet20_1w32a(method: Method, num_classes: int) -> nn.Module:
    """Binary weights, real activations, ReLU everywhere (BiPer's ResNet_32a)."""
    model = ResNet20(method, num_classes, "relu", binary_input=False)
    kaiming_normal_convs(model)
    return model


class BasicBlock(nn.Module):
    """z = Hardtanh(BN1(conv1(x))); out = Hardtanh(BN2(conv2(z)) + S(x)); one residual per block."""

    def __init__(self, method: Method, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = method.conv(in_planes, planes, 3, stride, 1)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = method.conv(planes, planes, 3, 1, 1)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Sequential()
        if stride != 1 or in_planes != planes:
            if method.architecture == "siman":  # a binary 1x1 conv + BN
                self.shortcut = nn.Sequential(method.conv(in_planes, planes, 1, stride), nn.BatchNorm2d(planes))
            else:
                self.shortcut = PadShortcut(planes // 4 if planes != in_planes else 0, "avg")

    def forward(self, x: Tensor) -> Tensor:
        z = conv_bn(self.conv1, self.bn1, x, nonlinearity=F.hardtanh)
        return conv_bn(self.conv2, self.bn2, z, self.shortcut(x), F.hardtanh)


class ResNet18(nn.Module):
    def __init__(self, method: Method, num_classes: int, widths: tuple[int, int, int, int]) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        in_planes = widths[0]
        for i, planes in enumerate(widths):
            stride = 1 if i == 0 else 2
            blocks = [BasicBlock(method, in_planes, planes, stride), BasicBlock(method, planes, planes, 1)]
            in_planes = planes
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.linear = nn.Linear(widths[3], num_classes)  # registered before bn2, as published
        self.bn2 = nn.BatchNorm1d(widths[3])

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn1(self.conv1(x))  # no activation in the stem
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = F.avg_pool2d(out, 4).flatten(1)
        return self.linear(self.bn2(out))


def _resnet18(method: Method, num_classes: int, widths: tuple[int, int, int, int]) -> nn.Module:
    model = ResNet18(method, num_classes, widths)
    if method.architecture != "siman":  # SiMaN keeps PyTorch's default init here
        kaiming_normal_convs(model)
    return model


@register_model("cifar")
def resnet18_1w1a(method: Method, num_classes: int) -> nn.Module:
    return _resnet18(method, num_classes, (64, 128, 256, 512))


@register_model("cifar")
def resnet18A_1w1a(method: Method, num_classes: int) -> nn.Module:
    return _resnet18(method, num_classes, (32, 32, 64, 128))


@register_model("cifar")
def resnet18B_1w1a(method: Method, num_classes: int) -> nn.Module:
    return _resnet18(method, num_classes, (32, 64, 128, 256))


@register_model("cifar")
def resnet18C_1w1a(method: Method, num_classes: int) -> nn.Module:
    return _resnet18(method, num_classes, (64, 64, 128, 256))
