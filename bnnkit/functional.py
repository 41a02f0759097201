"""Sign functions with surrogate gradients, and the per-sample and per-row statistics around them.

Each autograd Function follows the form `torch.autograd.Function` documents for `torch.func`
(static `forward` without ctx, separate `setup_context`), so they compose with vmap and grad.
sign(0) = 0 everywhere, as torch.sign gives and as the published code computes.
"""
from __future__ import annotations

import torch
from torch import Tensor

EPS = 1e-5  # the variance epsilon of both published methods


class ApproxSign(torch.autograd.Function):
    """Forward sign(x); backward max(0, 2 - 2|x|) * g, the derivative of Bi-Real Net's
    piecewise-quadratic ApproxSign (Liu et al., ECCV 2018), used by SiMaN and BiPer."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x: Tensor) -> Tensor:
        return torch.sign(x)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        ctx.save_for_backward(inputs[0])

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        (x,) = ctx.saved_tensors
        return grad * (2 - 2 * x.abs()).clamp_min(0)


class ClippedSign(torch.autograd.Function):
    """Forward sign(x); backward g * 1{|x| <= 1}: the straight-through estimator with the
    hard-tanh clip of BinaryConnect / BinaryNet (Courbariaux et al., 2016)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x: Tensor) -> Tensor:
        return torch.sign(x)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        ctx.save_for_backward(inputs[0])

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        (x,) = ctx.saved_tensors
        return grad * (x.abs() <= 1).to(grad.dtype)


class IdentitySign(torch.autograd.Function):
    """Forward sign(x); backward g unchanged (plain straight-through), as BiPer's stage 2 uses
    on top of sin(f*w) so that the gradient stays f*cos(f*w)*g."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x: Tensor) -> Tensor:
        return torch.sign(x)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        pass

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        return grad


def approx_sign(x: Tensor) -> Tensor:
    return ApproxSign.apply(x)


def clipped_sign(x: Tensor) -> Tensor:
    return ClippedSign.apply(x)


def identity_sign(x: Tensor) -> Tensor:
    return IdentitySign.apply(x)


def per_sample_std(x: Tensor) -> Tensor:
    """sqrt(var + eps) over (C, H, W) of each sample, unbiased variance, shape [N, 1, 1, 1]."""
    return torch.sqrt(x.var(dim=(1, 2, 3), keepdim=True) + EPS)


def per_row_standardize(w: Tensor) -> Tensor:
    """(w - mean_r) / sqrt(var_r + eps) per output channel (row) over dims (1, 2, 3), unbiased."""
    v = w - w.mean(dim=(1, 2, 3), keepdim=True)
    return v / torch.sqrt(v.var(dim=(1, 2, 3), keepdim=True) + EPS)


def percentile(values: Tensor, q: float) -> Tensor:
    """numpy.percentile(values, q) with numpy's default 'linear' method, on the tensor's device.

    The position q/100*(n-1) in ascending order, linearly interpolated between its two
    neighbours (numpy's own two-sided lerp, for the last ulp). No host synchronisation."""
    flat = values.flatten()
    n = flat.numel()
    pos = q / 100.0 * (n - 1)
    lo = min(int(pos), n - 1)
    hi = min(lo + 1, n - 1)
    t = pos - lo
    a = torch.kthvalue(flat, lo + 1).values
    b = a if hi == lo else torch.kthvalue(flat, hi + 1).values
    if t >= 0.5:
        return b - (b - a) * (1 - t)
    return a + (b - a) * t
