"""VGG-small for CIFAR (REFERENCE.md §2.3). ReCU's, IR-Net's and RBNN's VGG_SMALL_1W1A are BiPer's
(Hardtanh, the same init, a plain classifier: no LogSoftmax, METHODS.md §2.2 notwithstanding, as
the golden cases record)."""
from __future__ import annotations

import math

from torch import Tensor, nn

from ..nn.layers import conv_bn, conv_pool
from ..methods import Method
from . import register_model
from ._common import activation


class VGGSmall(nn.Module):
    """conv0 (real) -> BN -> act, then five binary 3x3 convs (128-128-256-256-512-512) with
    max pooling after convs 1, 3 and 5 (before their BN), then fc(8192 -> classes)."""

    def __init__(self, method: Method, num_classes: int) -> None:
        super().__init__()
        arch = method.architecture
        self.conv0 = nn.Conv2d(3, 128, 3, padding=1, bias=False)
        self.bn0 = nn.BatchNorm2d(128)
        self.nonlinear0 = activation(arch, 128)
        widths = (128, 128, 256, 256, 512, 512)
        for i in range(1, 6):
            setattr(self, f"conv{i}", method.conv(widths[i - 1], widths[i], 3, 1, 1))
            setattr(self, f"bn{i}", nn.BatchNorm2d(widths[i]))
            setattr(self, f"nonlinear{i}", activation(arch, widths[i]))
        self.pooling = nn.MaxPool2d(2, 2)
        self.fc = nn.Linear(512 * 4 * 4, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.nonlinear0(self.bn0(self.conv0(x)))
        for i in range(1, 6):
            conv, bn = getattr(self, f"conv{i}"), getattr(self, f"bn{i}")
            act = getattr(self, f"nonlinear{i}")
            x = conv_pool(conv, self.pooling, x, bn, act) if i % 2 else conv_bn(conv, bn, x, nonlinearity=act)
        return self.fc(x.flatten(1))


@register_model("cifar", architectures=("siman", "biper", "irnet", "rbnn"))
def vgg_small_1w1a(method: Method, num_classes: int) -> nn.Module:
    model = VGGSmall(method, num_classes)
    for m in model.modules():  # the same init in both publications
        if isinstance(m, nn.Conv2d):
            n = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
            m.weight.data.normal_(0, math.sqrt(2.0 / n))
        elif isinstance(m, nn.BatchNorm2d):
            m.weight.data.fill_(1)
            m.bias.data.zero_()
        elif isinstance(m, nn.Linear):
            m.weight.data.normal_(0, 0.01)
            m.bias.data.zero_()
    return model
