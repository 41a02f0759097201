"""ImageNet ResNet-18/34 with Bi-Real blocks (REFERENCE.md §2.4)."""
from __future__ import annotations

from torch import Tensor, nn

from ..nn.layers import conv_bn
from ..methods import Method
from . import register_model
from ._common import activation, kaiming_normal_convs


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


class ResNet(nn.Module):
    def __init__(self, method: Method, num_classes: int, depths: tuple[int, int, int, int]) -> None:
        super().__init__()
        arch = method.architecture
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.nonlinear = activation(arch, 64, stem=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        in_planes = 64
        for i, (planes, depth) in enumerate(zip((64, 128, 256, 512), depths)):
            stride = 1 if i == 0 else 2
            blocks = []
            for b in range(depth):
                down = None
                if b == 0 and (stride != 1 or in_planes != planes):
                    down = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))
                blocks.append(Block(method, in_planes, planes, stride if b == 0 else 1, down))
                in_planes = planes
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.avgpool = nn.AvgPool2d(7, stride=1)
        self.bn2 = nn.BatchNorm1d(512)
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.nonlinear(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.bn2(self.avgpool(x).flatten(1)))


def _resnet(method: Method, num_classes: int, depths: tuple[int, int, int, int]) -> nn.Module:
    model = ResNet(method, num_classes, depths)
    kaiming_normal_convs(model)
    for m in model.modules():  # every BatchNorm2d starts near zero, stem and downsample included
        if isinstance(m, nn.BatchNorm2d):
            nn.init.constant_(m.weight, 1e-8)
            nn.init.zeros_(m.bias)
    return model


@register_model("imagenet")
def resnet18_1w1a(method: Method, num_classes: int) -> nn.Module:
    return _resnet(method, num_classes, (2, 2, 2, 2))


@register_model("imagenet")
def resnet34_1w1a(method: Method, num_classes: int) -> nn.Module:
    return _resnet(method, num_classes, (3, 4, 6, 3))
