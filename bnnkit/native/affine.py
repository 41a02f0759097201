"""Eval-mode BatchNorm as the per-channel fused multiply-add PyTorch's CPU kernel computes, so
that a kernel epilogue fma(x, a, b) gives F.batch_norm's float32 result to the last bit (used by
the exporter and by the packed eval path of bnnkit._packed_eval)."""
from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import torch
from torch import nn

from ..errors import DeployExportError


def bn_affine(bn: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """Eval-mode BatchNorm as y = fma(x, a, b) in float32, with a and b rounded exactly as
    PyTorch's CPU kernel rounds them (a = weight * rsqrt(var + eps), b = bias - mean * a with one
    rounding), so that the runtime's epilogue gives F.batch_norm's result to the last bit."""
    if bn.running_mean is None or bn.running_var is None:
        raise DeployExportError(f"{type(bn).__name__} without running statistics cannot be folded or exported")
    return bn_affine_from(bn.running_mean, bn.running_var, bn.weight, bn.bias, bn.eps)


def bn_affine_from(mean: torch.Tensor, var: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
                   eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """bn_affine of the BatchNorm with these statistics and affine parameters (None: 1 and 0)."""
    var, mean = var.detach().cpu().float(), mean.detach().cpu().float()
    weight = weight.detach().cpu().float() if weight is not None else torch.ones_like(var)
    bias = bias.detach().cpu().float() if bias is not None else torch.zeros_like(var)
    a = torch.rsqrt(var + eps) * weight
    return a, fma_float32(-mean, a, bias)


def epilogue_affine(bn: nn.Module | None, channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The (scale, bias) of a binary conv's epilogue fma(y, scale, bias): bn_affine(bn), or without
    a BatchNorm (1, -0.0), for which fma(y, 1, -0.0) is y for every value, -0.0 included."""
    if bn is None:
        return torch.ones(channels), torch.full((channels,), -0.0)
    return bn_affine(bn)


def fma_float32(x: torch.Tensor, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """x * y + z for float32 vectors with a single rounding to float32 (nearest, ties to even).

    In float64 the product is exact and the sum rounds once; rounding that to float32 again can
    only differ from one rounding of the exact value when the float64 sum lies exactly halfway
    between two float32 values (a midpoint is itself a float64, so none can lie strictly between
    the exact value and its nearest float64). Those rare elements are redone in exact rationals."""
    x, y, z = (t.detach().cpu().float().reshape(-1).numpy() for t in (x, y, z))
    with np.errstate(over="ignore", invalid="ignore"):  # numpy, not torch: these vectors are short
        wide = x.astype(np.float64) * y + z
        out = wide.astype(np.float32)
        down, up = np.nextafter(out, np.float32(-np.inf)), np.nextafter(out, np.float32(np.inf))
        halfway = ((out.astype(np.float64) + down) / 2 == wide) | ((out.astype(np.float64) + up) / 2 == wide)
    for i in np.flatnonzero(halfway & np.isfinite(wide)).tolist():
        out[i] = _fma_exact(float(x[i]), float(y[i]), float(z[i]))
    return torch.from_numpy(out)


def _fma_exact(x: float, y: float, z: float) -> float:
    exact = Fraction(x) * Fraction(y) + Fraction(z)
    f = np.float32(float(exact))  # within one float32 step of the answer
    near = [c for c in (np.nextafter(f, np.float32(-np.inf)), f, np.nextafter(f, np.float32(np.inf))) if np.isfinite(c)]
    return float(min(near, key=lambda c: (abs(Fraction(float(c)) - exact), int(np.array(c).view(np.int32)) & 1)))
