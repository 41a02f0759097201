"""BiPer's binary MobileNet (REFERENCE.md §2.5). PyTorch's default init throughout."""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from ..nn.layers import conv_bn
from ..methods import Method
from . import register_model

# (in, out, stride) of the 13 blocks
_BLOCKS = ((32, 64, 1), (64, 128, 2), (128, 128, 1), (128, 256, 2), (256, 256, 1), (256, 512, 2),
           *[(512, 512, 1)] * 5, (512, 1024, 2), (1024, 1024, 1))


class DWBlock(nn.Module):
    """y = BN1(grouped 3x3 conv(x)) + R(x); z = Hardtanh(y); u = Hardtanh(BN2(1x1(z)));
    out = Hardtanh(BN3(1x1(u)) + u). Groups of 16 input channels; R pools when strided."""

    def __init__(self, method: Method, inp: int, oup: int, stride: int) -> None:
        super().__init__()
        self.conv1 = method.conv(inp, inp, 3, stride, 1, groups=inp // 16)
        self.bn1 = nn.BatchNorm2d(inp)
        self.conv2 = method.conv(inp, oup, 1)
        self.bn2 = nn.BatchNorm2d(oup)
        self.conv3 = method.conv(oup, oup, 1)
        self.bn3 = nn.BatchNorm2d(oup)
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        residual = x if self.stride == 1 else F.avg_pool2d(x, 2, 2, ceil_mode=True, count_include_pad=False)
        z = conv_bn(self.conv1, self.bn1, x, residual, F.hardtanh)
        u = conv_bn(self.conv2, self.bn2, z, nonlinearity=F.hardtanh)
        return conv_bn(self.conv3, self.bn3, u, u, F.hardtanh)


class MobileNet(nn.Module):
    def __init__(self, method: Method, num_classes: int) -> None:
        super().__init__()
        stem = nn.Sequential(nn.Conv2d(3, 32, 3, 2, 1, bias=False), nn.BatchNorm2d(32), nn.Hardtanh(inplace=True))
        self.model = nn.Sequential(stem, *(DWBlock(method, i, o, s) for i, o, s in _BLOCKS))
        self.fc = nn.Linear(1024, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = F.adaptive_avg_pool2d(self.model(x), 1)
        return self.fc(x.view(-1, 1024))


@register_model("imagenet", architectures=("biper",))
def mobilenet_1w1a(method: Method, num_classes: int) -> nn.Module:
    return MobileNet(method, num_classes)
