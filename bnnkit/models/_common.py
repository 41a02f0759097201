"""Pieces shared by the model files: activations and shortcuts as the two methods publish them."""
from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor, nn

from ..nn.functional import avg_pool_pad


def activation(arch: str, channels: int, stem: bool = False) -> nn.Module:
    """SiMaN: ReLU in the stem, PReLU(channels) in blocks; every other variant (BiPer, ReCU, IR-Net,
    RBNN): Hardtanh everywhere."""
    if arch == "siman":
        return nn.ReLU(inplace=True) if stem else nn.PReLU(channels)
    return nn.Hardtanh(inplace=True)


class PadShortcut(nn.Module):
    """Downsample by 2 (option A: x[:, :, ::2, ::2] for pool 'slice', or 2x2 average pooling for
    'avg') and zero-pad `pad` channels on each side of the channel axis. Stateless."""

    def __init__(self, pad: int, pool: str) -> None:
        super().__init__()
        if pool not in ("slice", "avg"):
            raise ValueError(f"PadShortcut pool must be 'slice' or 'avg', not {pool!r}")
        self.pad, self.pool = pad, pool

    def forward(self, x: Tensor) -> Tensor:
        if self.pool == "avg":  # PyTorch's NCHW avg_pool2d is slow on CPU: one native pass, same bits
            return avg_pool_pad(x, 2, self.pad)
        x = x[:, :, ::2, ::2]
        return F.pad(x, (0, 0, 0, 0, self.pad, self.pad)) if self.pad else x

    def extra_repr(self) -> str:
        return f"pad={self.pad}, pool={self.pool!r}"


def kaiming_normal_convs(model: nn.Module, linear: bool = False) -> None:
    """kaiming_normal_ (fan_in, gain sqrt 2) on every Conv2d (binary ones included), in
    registration order; also on Linear weights when `linear`."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d) or (linear and isinstance(m, nn.Linear)):
            nn.init.kaiming_normal_(m.weight)


def init_batchnorms(model: nn.Module, weight: float) -> None:
    """Every BatchNorm2d's weight = `weight`, bias 0 (draws no random numbers)."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            nn.init.constant_(m.weight, weight)
            nn.init.zeros_(m.bias)


def normal_fan_out_convs(model: nn.Module) -> None:
    """Every Conv2d's weight ~ N(0, sqrt(2 / (K*K*O))) (binary ones included), in registration order."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            n = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
            m.weight.data.normal_(0, math.sqrt(2.0 / n))
