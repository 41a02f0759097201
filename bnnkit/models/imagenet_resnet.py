"""ImageNet ResNet-18/34: Bi-Real blocks with binary activations (REFERENCE.md §2.4, METHODS.md
§2.2, §3.2), and IR-Net's 1w32a ResNets with real activations and one residual per block."""
from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from ..nn.layers import conv_bn
from ..methods import Method
from . import register_model
from ._common import activation, init_batchnorms, kaiming_normal_convs, normal_fan_out_convs


@dataclass(frozen=True)
class ResNetVariant:
    """How one publication builds its ImageNet ResNets.

    block: 'bireal' (a residual around each binary conv) or 'basic' (one per block, ReLU, real
    activations: IR-Net's 1w32a); init: 'kaiming' (kaiming_normal_ on every Conv2d, then every
    BatchNorm2d weight 1e-8, bias 0) or 'fan_out' (N(0, sqrt(2/(K*K*O))) on every Conv2d, BatchNorm
    defaults); bn3: an unused BatchNorm1d(classes) after fc, kept because the authors' state_dict
    has it; log_softmax: the output is log_softmax(fc(...)), log-probabilities."""

    block: str = "bireal"
    init: str = "kaiming"
    bn3: bool = False
    log_softmax: bool = False


RESNET = {
    "siman": ResNetVariant(),
    "biper": ResNetVariant(),
    # lmbxmu/RBNN models_imagenet/resnet.py: BiPer's (which came from it) plus an unused bn3
    "rbnn": ResNetVariant(bn3=True),
    # htqin/IR-Net ImageNet/ResNet{18,34}/1w1a/models/resnet.py
    "irnet": ResNetVariant(init="fan_out", bn3=True, log_softmax=True),
}
RESNET_1W32A = {  # htqin/IR-Net ImageNet/ResNet{18,34}/1w32a/models/resnet.py
    "irnet": ResNetVariant(block="basic", init="fan_out", bn3=True, log_softmax=True),
}


class Block(nn.Module):
    """y1 = BN1(conv1(x)) + D(x); z = act1(y1); y2 = BN2(conv2(z)) + z; out = act2(y2).
    D is identity or a real 1x1 conv + BN, built before the block's layers but registered
    after them, as the authors' _make_layer does (it fixes the seeded RNG order)."""

    def __init__(self, method: Method, in_planes: int, planes: int, stride: int, downsample: nn.Module | None) -> None:
        super().__init__()
        arch = method.architecture
        self.conv1 = method.conv(in_planes, planes, 3, stride, 1)
        self.bn1 = nn.BatchNorm2d(planes)
        self.nonlinear1 = activation(arch, planes)
        self.conv2 = method.conv(planes, planes, 3, 1, 1)
        self.bn2 = nn.BatchNorm2d(planes)
        self.nonlinear2 = activation(arch, planes)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        z = conv_bn(self.conv1, self.bn1, x, identity, self.nonlinear1)
        return conv_bn(self.conv2, self.bn2, z, z, self.nonlinear2)


class BasicBlock32a(nn.Module):
    """Real activations: z = ReLU(BN1(conv1(x))); out = ReLU(BN2(conv2(z)) + D(x))."""

    def __init__(self, method: Method, in_planes: int, planes: int, stride: int, downsample: nn.Module | None) -> None:
        super().__init__()
        self.conv1 = method.conv(in_planes, planes, 3, stride, 1, binary_input=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.nonlinear = nn.ReLU(inplace=True)
        self.conv2 = method.conv(planes, planes, 3, 1, 1, binary_input=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        z = conv_bn(self.conv1, self.bn1, x, nonlinearity=self.nonlinear)
        return conv_bn(self.conv2, self.bn2, z, identity, self.nonlinear)


class ResNet(nn.Module):
    def __init__(self, method: Method, num_classes: int, depths: tuple[int, int, int, int], v: ResNetVariant) -> None:
        super().__init__()
        arch = method.architecture
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.nonlinear = nn.ReLU(inplace=True) if v.block == "basic" else activation(arch, 64, stem=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        block = Block if v.block == "bireal" else BasicBlock32a
        in_planes = 64
        for i, (planes, depth) in enumerate(zip((64, 128, 256, 512), depths)):
            stride = 1 if i == 0 else 2
            blocks = []
            for b in range(depth):
                down = None
                if b == 0 and (stride != 1 or in_planes != planes):
                    down = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))
                blocks.append(block(method, in_planes, planes, stride if b == 0 else 1, down))
                in_planes = planes
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.avgpool = nn.AvgPool2d(7, stride=1)
        self.bn2 = nn.BatchNorm1d(512)
        self.fc = nn.Linear(512, num_classes)
        if v.bn3:  # defined by the authors, never called by their forward
            self.bn3 = nn.BatchNorm1d(num_classes)
            self.unused_modules = ("bn3",)
        self.log_softmax = v.log_softmax

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.nonlinear(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = self.fc(self.bn2(self.avgpool(x).flatten(1)))
        return F.log_softmax(x, dim=1) if self.log_softmax else x


def _resnet(method: Method, num_classes: int, depths: tuple[int, int, int, int],
            variants: dict[str, ResNetVariant] = RESNET) -> nn.Module:
    v = variants[method.architecture]
    model = ResNet(method, num_classes, depths, v)
    if v.init == "kaiming":
        kaiming_normal_convs(model)
        init_batchnorms(model, 1e-8)  # every BatchNorm2d starts near zero, stem and downsample included
    else:
        normal_fan_out_convs(model)
    return model


@register_model("imagenet", architectures=tuple(RESNET))
def resnet18_1w1a(method: Method, num_classes: int) -> nn.Module:
    return _resnet(method, num_classes, (2, 2, 2, 2))


@register_model("imagenet", architectures=tuple(RESNET))
def resnet34_1w1a(method: Method, num_classes: int) -> nn.Module:
    return _resnet(method, num_classes, (3, 4, 6, 3))


@register_model("imagenet", architectures=tuple(RESNET_1W32A))
def resnet18_1w32a(method: Method, num_classes: int) -> nn.Module:
    """IR-Net's ResNet-18 with binary weights and real activations."""
    return _resnet(method, num_classes, (2, 2, 2, 2), RESNET_1W32A)


@register_model("imagenet", architectures=tuple(RESNET_1W32A))
def resnet34_1w32a(method: Method, num_classes: int) -> nn.Module:
    """IR-Net's ResNet-34 with binary weights and real activations."""
    return _resnet(method, num_classes, (3, 4, 6, 3), RESNET_1W32A)
