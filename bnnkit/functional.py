"""Sign functions with surrogate gradients, and the per-sample and per-row statistics around them.

Each autograd Function follows the form `torch.autograd.Function` documents for `torch.func`
(static `forward` without ctx, separate `setup_context`), so they compose with vmap and grad.
sign(0) = 0 everywhere, as torch.sign gives and as the published code computes.
"""
from __future__ import annotations

import os

import torch
from torch import Tensor

EPS = 1e-5  # the variance epsilon of both published methods


class _SignSavingInput(torch.autograd.Function):
    """Forward sign(x), saving x for a surrogate backward that subclasses define."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x: Tensor) -> Tensor:
        return torch.sign(x)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        ctx.save_for_backward(inputs[0])


class ApproxSign(_SignSavingInput):
    """Forward sign(x); backward max(0, 2 - 2|x|) * g, the derivative of Bi-Real Net's
    piecewise-quadratic ApproxSign (Liu et al., ECCV 2018), used by SiMaN and BiPer."""

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        (x,) = ctx.saved_tensors
        return grad * (2 - 2 * x.abs()).clamp_min(0)


class ClippedSign(_SignSavingInput):
    """Forward sign(x); backward g * 1{|x| <= 1}: the straight-through estimator with the
    hard-tanh clip of BinaryConnect / BinaryNet (Courbariaux et al., 2016)."""

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


def per_row_standardize(w: Tensor) -> Tensor:
    """(w - mean_r) / sqrt(var_r + eps) per output channel (row) over dims (1, 2, 3), unbiased."""
    v = w - w.mean(dim=(1, 2, 3), keepdim=True)
    return v / torch.sqrt(v.var(dim=(1, 2, 3), keepdim=True) + EPS)


def percentile(values: Tensor, q: float) -> Tensor:
    """numpy.percentile(values, q) with numpy's default 'linear' method, on the tensor's device.

    The position q/100*(n-1) in ascending order, linearly interpolated between its two
    neighbours (numpy's own two-sided lerp, for the last ulp). One selection finds the lower
    neighbour; the upper one is the smallest larger value, or the same value when it repeats.
    No host synchronisation."""
    flat = values.flatten()
    n = flat.numel()
    pos = q / 100.0 * (n - 1)
    lo = min(int(pos), n - 1)
    t = pos - lo
    a = torch.kthvalue(flat, lo + 1).values
    if t == 0 or lo == n - 1:
        return a
    repeats = (flat <= a).sum() > lo + 1  # rank lo + 1 holds the same value as rank lo
    b = torch.where(repeats, a, torch.where(flat > a, flat, torch.full_like(flat, float("inf"))).min())
    if t >= 0.5:
        return b - (b - a) * (1 - t)
    return a + (b - a) * t

# --- fused input quantizers ------------------------------------------------------------------
# The math of SiMaN's and BiPer's activation paths as plain functions of whole tensors. They run
# eagerly (in-place where it saves passes) or, when enabled, through torch.compile, which fuses
# each into one or two loops over the activations (set_compiled / BNNKIT_COMPILE=1).

def _stats(x: Tensor) -> tuple[Tensor, Tensor]:
    """Per-sample mean and 1/sqrt(var + eps) over (C,H,W), unbiased; two reductions, no temporaries."""
    n = x[0].numel()
    flat = x.reshape(x.shape[0], -1)
    mean = flat.mean(dim=1).view(-1, 1, 1, 1)
    sumsq = torch.bmm(flat.unsqueeze(1), flat.unsqueeze(2)).view(-1, 1, 1, 1)
    var = (sumsq - n * mean * mean).clamp_(min=0) / (n - 1)
    return mean, torch.rsqrt(var + EPS)


def _row_sum(a: Tensor) -> Tensor:
    return a.reshape(a.shape[0], -1).sum(dim=1).view(-1, 1, 1, 1)


def _row_dot(a: Tensor, b: Tensor) -> Tensor:
    """Sum over (C, H, W) of a * b per sample, as [N, 1, 1, 1], without materialising a * b."""
    n = a.shape[0]
    return torch.bmm(a.reshape(n, 1, -1), b.reshape(n, -1, 1)).view(n, 1, 1, 1)


def _standardized_backward(x: Tensor, mean: Tensor, rstd: Tensor, grad: Tensor) -> Tensor:
    n = x[0].numel()
    y = torch.addcmul(-mean * rstd, x, rstd)
    half_gp = (1 - y.abs()).clamp_(min=0).mul_(grad)  # g' / 2, with g' = g * max(0, 2 - 2|y|)
    return half_gp.sub_(_row_sum(half_gp) / n).addcmul_(y, _row_dot(half_gp, y) / (n - 1), value=-1).mul_(2 * rstd)


def _scaled_backward(x: Tensor, grad: Tensor) -> Tensor:
    n = x[0].numel()
    mean, rstd = _stats(x)
    y = x * rstd
    half_gp = (1 - y.abs()).clamp_(min=0).mul_(grad)
    centred = torch.addcmul(-mean * rstd, x, rstd)
    return half_gp.addcmul_(centred, _row_dot(half_gp, y) / (n - 1), value=-1).mul_(2 * rstd)


def _standardized_backward_pure(x: Tensor, mean: Tensor, rstd: Tensor, grad: Tensor) -> Tensor:
    """The same as _standardized_backward without in-place ops, for torch.compile."""
    n = x[0].numel()
    y = (x - mean) * rstd
    gp = grad * (2 - 2 * y.abs()).clamp_min(0)
    mean_gp = gp.sum(dim=(1, 2, 3), keepdim=True) / n
    proj = (gp * y).sum(dim=(1, 2, 3), keepdim=True) / (n - 1)
    return rstd * (gp - mean_gp - y * proj)


def _scaled_backward_pure(x: Tensor, grad: Tensor) -> Tensor:
    n = x[0].numel()
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    rstd = torch.rsqrt(((x - mean) ** 2).sum(dim=(1, 2, 3), keepdim=True) / (n - 1) + EPS)
    y = x * rstd
    gp = grad * (2 - 2 * y.abs()).clamp_min(0)
    proj = (gp * y).sum(dim=(1, 2, 3), keepdim=True) / (n - 1)
    return rstd * (gp - (x - mean) * rstd * proj)


def _standardized_forward_pure(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    n = x[0].numel()
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    rstd = torch.rsqrt(((x - mean) ** 2).sum(dim=(1, 2, 3), keepdim=True) / (n - 1) + EPS)
    return torch.sign(x - mean), mean, rstd


def _standardized_forward(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    mean, rstd = _stats(x)
    return torch.sign(x - mean), mean, rstd


_EAGER = {"standardized_forward": _standardized_forward, "standardized_backward": _standardized_backward,
          "scaled_backward": _scaled_backward}
_PURE = {"standardized_forward": _standardized_forward_pure, "standardized_backward": _standardized_backward_pure,
         "scaled_backward": _scaled_backward_pure}
_kernels: dict = dict(_EAGER)


def set_compiled(enabled: bool) -> bool:
    """Run the fused quantizer kernels through torch.compile (True) or eagerly (False).

    Compiling needs a working inductor backend (a C++ compiler on CPU, Triton on GPU) and costs
    about a minute once per machine (inductor caches the kernels on disk). If compilation is not
    possible, bnnkit stays eager and returns False."""
    global _kernels
    if not enabled:
        _kernels = dict(_EAGER)
        return False
    try:
        compiled = {k: torch.compile(f, dynamic=True) for k, f in _PURE.items()}
        probe = torch.randn(2, 3, 4, 4)
        out, mean, rstd = compiled["standardized_forward"](probe)
        compiled["standardized_backward"](probe, mean, rstd, torch.ones_like(probe))
        compiled["scaled_backward"](probe, torch.ones_like(probe))
    except Exception as exc:  # no compiler, unsupported platform
        import warnings

        warnings.warn(f"bnnkit: torch.compile unavailable ({type(exc).__name__}); using eager kernels")
        _kernels = dict(_EAGER)
        return False
    _kernels = compiled
    return True


def compiled_enabled() -> bool:
    return _kernels["standardized_backward"] is not _standardized_backward


class StandardizedApproxSign(torch.autograd.Function):
    """Forward sign((x - mean_n) / sqrt(var_n + eps)) = sign(x - mean_n), per sample over (C,H,W),
    unbiased variance. Backward: ApproxSign's max(0, 2 - 2|y|) on y = (x - mean)/std, then the
    exact gradient of the standardisation:
        dx = rstd * (g' - mean(g') - y * sum(g' * y) / (n - 1)),   g' = g * max(0, 2 - 2|y|).
    One fused function in place of autograd's dozen saved intermediates (SiMaN's input path)."""

    @staticmethod
    def forward(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return _kernels["standardized_forward"](x)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        _, mean, rstd = output
        ctx.mark_non_differentiable(mean, rstd)
        ctx.save_for_backward(inputs[0], mean, rstd)

    @staticmethod
    def backward(ctx, grad: Tensor, _mean_grad: Tensor, _rstd_grad: Tensor) -> Tensor:
        x, mean, rstd = ctx.saved_tensors
        return _kernels["standardized_backward"](x, mean, rstd, grad.contiguous())


class ScaledApproxSign(torch.autograd.Function):
    """Forward sign(x / sqrt(var_n + eps)) = sign(x), per sample over (C,H,W), unbiased, no mean
    subtraction. Backward: ApproxSign's max(0, 2 - 2|y|) on y = x * rstd, then the exact gradient
    of the scaling:
        dx = rstd * (g' - c * sum(g' * y) / (n - 1)),   c = (x - mean) * rstd.
    BiPer's input path in training, fused; the statistics are only needed by the backward pass."""

    @staticmethod
    def forward(x: Tensor) -> Tensor:
        return torch.sign(x)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        ctx.save_for_backward(inputs[0])

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        (x,) = ctx.saved_tensors
        return _kernels["scaled_backward"](x, grad.contiguous())


def standardized_approx_sign(x: Tensor) -> Tensor:
    return StandardizedApproxSign.apply(x)[0]


def scaled_approx_sign(x: Tensor) -> Tensor:
    return ScaledApproxSign.apply(x)


if os.environ.get("BNNKIT_COMPILE", "0") == "1":
    set_compiled(True)
