"""Sign functions with surrogate gradients, and the per-sample and per-row statistics around them.

Each autograd Function follows the form `torch.autograd.Function` documents for `torch.func`
(static `forward` without ctx, separate `setup_context`), so they compose with vmap and grad.
sign(0) = 0 everywhere, as torch.sign gives and as the published code computes.
"""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F
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


def _percentile_rank(n: int, q: float) -> tuple[int, float]:
    """numpy's 'linear' percentile q of n values: the lower neighbour's rank and the fraction."""
    pos = q / 100.0 * (n - 1)
    lo = min(int(pos), n - 1)
    return lo, pos - lo


def _interpolate(a: Tensor, b: Tensor, t: float) -> Tensor:
    """numpy's two-sided lerp between neighbours a and b, for the last ulp."""
    if t >= 0.5:
        return b - (b - a) * (1 - t)
    return a + (b - a) * t


def percentile(values: Tensor, q: float) -> Tensor:
    """numpy.percentile(values, q) with numpy's default 'linear' method, on the tensor's device.

    The position q/100*(n-1) in ascending order, linearly interpolated between its two
    neighbours. One selection finds the lower neighbour; the upper one is the smallest larger
    value, or the same value when it repeats. No host synchronisation."""
    flat = values.flatten()
    n = flat.numel()
    lo, t = _percentile_rank(n, q)
    a = torch.kthvalue(flat, lo + 1).values
    if t == 0 or lo == n - 1:
        return a
    repeats = (flat <= a).sum() > lo + 1  # rank lo + 1 holds the same value as rank lo
    b = torch.where(repeats, a, torch.where(flat > a, flat, torch.full_like(flat, float("inf"))).min())
    return _interpolate(a, b, t)


# --- fused input quantizers ------------------------------------------------------------------
# SiMaN's and BiPer's activation paths as two kernels over whole tensors:
#   forward(x, centered) -> (sign(x - mean) or sign(x), mean, rstd), per sample over (C,H,W);
#   backward(x, mean, rstd, grad, centered) -> dL/dx.
# Three implementations compute the same math (tests/test_activation_kernels.py holds them to each other
# and to autograd): native C++ (csrc/bnn_act.cpp, two sweeps per sample; the default on CPU),
# eager PyTorch (GPU, and whatever the native one does not take), and the same PyTorch ops without
# in-place writes, for torch.compile (set_compiled / BNNKIT_COMPILE=1).

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


def _eager_forward(x: Tensor, centered: bool) -> tuple[Tensor, Tensor, Tensor]:
    mean, rstd = _stats(x)
    return torch.sign(x - mean) if centered else torch.sign(x), mean, rstd


def _eager_backward(x: Tensor, mean: Tensor, rstd: Tensor, grad: Tensor, centered: bool) -> Tensor:
    n = x[0].numel()
    grad = grad.contiguous()
    centred = torch.addcmul(-mean * rstd, x, rstd)
    y = centred if centered else x * rstd
    half_gp = (1 - y.abs()).clamp_(min=0).mul_(grad)  # g' / 2, with g' = g * max(0, 2 - 2|y|)
    proj = _row_dot(half_gp, y) / (n - 1)
    if centered:
        half_gp.sub_(_row_sum(half_gp) / n)
    return half_gp.addcmul_(centred, proj, value=-1).mul_(2 * rstd)


def _pure_forward(x: Tensor, centered: bool) -> tuple[Tensor, Tensor, Tensor]:
    n = x[0].numel()
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    rstd = torch.rsqrt(((x - mean) ** 2).sum(dim=(1, 2, 3), keepdim=True) / (n - 1) + EPS)
    return torch.sign(x - mean) if centered else torch.sign(x), mean, rstd


def _pure_backward(x: Tensor, mean: Tensor, rstd: Tensor, grad: Tensor, centered: bool) -> Tensor:
    n = x[0].numel()
    centred = (x - mean) * rstd
    y = centred if centered else x * rstd
    gp = grad * (2 - 2 * y.abs()).clamp_min(0)
    proj = (gp * y).sum(dim=(1, 2, 3), keepdim=True) / (n - 1)
    if centered:
        gp = gp - gp.sum(dim=(1, 2, 3), keepdim=True) / n
    return rstd * (gp - centred * proj)


def _native():
    """The native kernels (bnnkit.native._ext), or None where they are not built."""
    from ..native import kernels as native  # imported on first use: the extension may be absent

    return native.try_lib()


def _takes_native(x: Tensor) -> bool:
    """Dense float32 CPU samples, outside any tracer or functorch transform."""
    return (x.device.type == "cpu" and x.dtype == torch.float32 and x.dim() == 4 and x.numel() > 0
            and (x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last))
            and not torch.compiler.is_compiling() and not torch._C._functorch.is_functorch_wrapped_tensor(x)
            and bool(_native()))


def _native_forward(x: Tensor, centered: bool) -> tuple[Tensor, Tensor, Tensor]:
    if not _takes_native(x):
        return _eager_forward(x, centered)
    N = x.shape[0]
    out, mean, rstd = torch.empty_like(x), x.new_empty(N, 1, 1, 1), x.new_empty(N, 1, 1, 1)
    _native().act_forward(torch.get_num_threads(), (x.data_ptr(), x.numel(), 0, out.data_ptr(), mean.data_ptr(),
                                                    rstd.data_ptr(), N, x.numel() // N, int(centered), 0))
    return out, mean, rstd


def _native_backward(x: Tensor, mean: Tensor, rstd: Tensor, grad: Tensor, centered: bool,
                     sign_slope: bool = False) -> Tensor:
    if not (_takes_native(x) and grad.shape == x.shape and all(
            t.dtype == torch.float32 and t.numel() == x.shape[0] and t.is_contiguous() for t in (mean, rstd))):
        if sign_slope:
            raise RuntimeError("bnnkit: SiMaN's native weight backward got tensors it does not take")
        return _eager_backward(x, mean, rstd, grad, centered)
    if grad.stride() != x.stride() or grad.dtype != x.dtype or grad.device != x.device:
        grad = torch.empty_like(x).copy_(grad)  # the kernel pairs elements by position in memory
    dx = torch.empty_like(x)
    N = x.shape[0]
    _native().act_backward(torch.get_num_threads(), (x.data_ptr(), x.numel(), grad.data_ptr(), dx.data_ptr(),
                                                     mean.data_ptr(), rstd.data_ptr(), N, x.numel() // N,
                                                     int(centered), int(sign_slope)))
    return dx


_NATIVE = {"forward": _native_forward, "backward": _native_backward}
_EAGER = {"forward": _eager_forward, "backward": _eager_backward}
_PURE = {"forward": _pure_forward, "backward": _pure_backward}
_kernels: dict = dict(_EAGER if os.environ.get("BNNKIT_NATIVE_ACT", "1") == "0" else _NATIVE)


def set_kernels(kind: str) -> str:
    """Which implementation the activation paths use: 'native' (the default on CPU), 'eager'
    (PyTorch ops only) or 'compiled' (torch.compile). Returns the kind now in force: 'compiled'
    falls back to 'native' when compilation is not possible.

    Compiling needs a working inductor backend (a C++ compiler on CPU, Triton on GPU) and costs
    about a minute once per machine (inductor caches the kernels on disk)."""
    global _kernels
    if kind not in ("native", "eager", "compiled"):
        raise ValueError(f"kernels must be 'native', 'eager' or 'compiled', not {kind!r}")
    if kind != "compiled":
        _kernels = dict(_NATIVE if kind == "native" else _EAGER)
        return kind
    try:
        compiled = {k: torch.compile(f, dynamic=True) for k, f in _PURE.items()}
        probe = torch.randn(2, 3, 4, 4)
        for centered in (True, False):
            out, mean, rstd = compiled["forward"](probe, centered)
            compiled["backward"](probe, mean, rstd, torch.ones_like(probe), centered)
    except Exception as exc:  # no compiler, unsupported platform
        import warnings

        warnings.warn(f"bnnkit: torch.compile unavailable ({type(exc).__name__}); using native kernels")
        _kernels = dict(_NATIVE)
        return "native"
    _kernels = compiled
    return "compiled"


def set_compiled(enabled: bool) -> bool:
    """set_kernels('compiled') when enabled, else back to the native default; True if compiled."""
    return set_kernels("compiled" if enabled else "native") == "compiled"


def kernels_in_use() -> str:
    return {_native_forward: "native", _eager_forward: "eager"}.get(_kernels["forward"], "compiled")


def compiled_enabled() -> bool:
    return kernels_in_use() == "compiled"


def _save_input_and_stats(ctx, inputs, output) -> None:
    """setup_context of the functions whose forward returns (result, mean, rstd): the backward
    needs the input and the two statistics, which carry no gradient."""
    _, mean, rstd = output
    ctx.mark_non_differentiable(mean, rstd)
    ctx.save_for_backward(inputs[0], mean, rstd)


class StandardizedApproxSign(torch.autograd.Function):
    """Forward sign((x - mean_n) / sqrt(var_n + eps)) = sign(x - mean_n), per sample over (C,H,W),
    unbiased variance. Backward: ApproxSign's max(0, 2 - 2|y|) on y = (x - mean)/std, then the
    exact gradient of the standardisation:
        dx = rstd * (g' - mean(g') - y * sum(g' * y) / (n - 1)),   g' = g * max(0, 2 - 2|y|).
    One fused function in place of autograd's dozen saved intermediates (SiMaN's input path)."""

    @staticmethod
    def forward(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return _kernels["forward"](x, True)

    setup_context = staticmethod(_save_input_and_stats)

    @staticmethod
    def backward(ctx, grad: Tensor, _mean_grad: Tensor, _rstd_grad: Tensor) -> Tensor:
        x, mean, rstd = ctx.saved_tensors
        return _kernels["backward"](x, mean, rstd, grad, True)


class ScaledApproxSign(torch.autograd.Function):
    """Forward sign(x / sqrt(var_n + eps)) = sign(x), per sample over (C,H,W), unbiased, no mean
    subtraction. Backward: ApproxSign's max(0, 2 - 2|y|) on y = x * rstd, then the exact gradient
    of the scaling:
        dx = rstd * (g' - c * sum(g' * y) / (n - 1)),   c = (x - mean) * rstd.
    BiPer's input path in training, fused; the forward pass takes the statistics the backward needs
    in the same sweep as the sign."""

    @staticmethod
    def forward(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return _kernels["forward"](x, False)

    setup_context = staticmethod(_save_input_and_stats)

    @staticmethod
    def backward(ctx, grad: Tensor, _mean_grad: Tensor, _rstd_grad: Tensor) -> Tensor:
        x, mean, rstd = ctx.saved_tensors
        return _kernels["backward"](x, mean, rstd, grad, False)


class ChannelScale(torch.autograd.Function):
    """y * alpha with alpha [C, 1, 1] per channel of y [N, C, H, W]: the binary conv's scale.
    Backward: dy = g * alpha (as autograd's mul) and dalpha = sum over (N, H, W) of g * y, in one
    native sweep on CPU instead of a product, a second product and a reduction."""

    @staticmethod
    def forward(y: Tensor, alpha: Tensor) -> Tensor:
        return y * alpha

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        ctx.save_for_backward(*inputs)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None]:
        y, alpha = ctx.saved_tensors
        if not ctx.needs_input_grad[1]:
            return grad * alpha, None
        if _kernels["forward"] is _native_forward and _takes_native(y) and alpha.dtype == torch.float32 and alpha.numel() == y.shape[1]:
            return _native_scale_backward(y, alpha, grad)
        return grad * alpha, (grad * y).sum(dim=(0, 2, 3)).view_as(alpha)


def siman_center_and_clip_bounds(weight: Tensor, percent: float) -> Tensor:
    """SiMaN's centring in place (w -= row mean) and, natively, the clipping bounds that
    `percentile` gives for the centred |w| over the whole tensor: float32 [low, high], low at
    `percent` and high at 100 - percent. For takes_native_siman_weight tensors."""
    n, O = weight.numel(), weight.shape[0]
    (lo_a, t_a), (lo_b, t_b) = _percentile_rank(n, percent), _percentile_rank(n, 100.0 - percent)
    ranks = torch.tensor([lo_a, min(lo_a + 1, n - 1), lo_b, min(lo_b + 1, n - 1)], dtype=torch.int64)
    values = torch.empty(4)
    _native().siman_center_ranks(torch.get_num_threads(), (weight.data_ptr(), n, O, n // O, ranks.data_ptr(), 4,
                                                           values.data_ptr()))
    torch.autograd.graph.increment_version(weight)
    bounds = [values[i] if t == 0 or lo == n - 1 else _interpolate(values[i], values[i + 1], t)
              for i, lo, t in ((0, lo_a, t_a), (2, lo_b, t_b))]
    return torch.stack(bounds)


class SignMagnitudeCode(torch.autograd.Function):
    """SiMaN's weight path in two native kernels (CPU float32, with the native kernels in use).

    Forward, per output channel (row) of the latent weight w [O, C, K, K] and its 0/1 code [O, k]:
    optionally w <- w - mean_r(w) in place, and optionally (after siman_center_and_clip_bounds
    has centred it) w <- sign(w) * clamp(|w|, low, high) in place (quirk Q1); mean and rstd of the row;
    if `update`, code <- 1 where |w - mean| is above the row's lower median (as torch.median picks
    it), else 0; output 2 * code - 1. The code is the larger half of |S|, S = (w - mean) * rstd:
    a positive scale keeps the order, so the selection skips it.
    Backward: dL/dS = sign(S) * g (straight through |S|), then the exact gradient of the
    standardisation, dw = rstd * (g' - mean(g') - S * sum(g' * S) / (k - 1)), g' = sign(S) * g.
    The same math as siman.py's eager path, which runs everywhere else (and with kernels 'eager')."""

    @staticmethod
    def forward(weight: Tensor, code: Tensor, center: bool, clip: Tensor | None,
                update: bool) -> tuple[Tensor, Tensor, Tensor]:
        O = weight.shape[0]
        wb, mean, rstd = torch.empty_like(weight), weight.new_empty(O, 1, 1, 1), weight.new_empty(O, 1, 1, 1)
        if clip is not None:
            clip = clip.detach().to(torch.float32).contiguous()
            assert clip.shape == (2,)
        _native().siman_weight(torch.get_num_threads(), (weight.data_ptr(), weight.numel(), code.data_ptr(),
                                                         wb.data_ptr(), mean.data_ptr(), rstd.data_ptr(), O,
                                                         weight.numel() // O, int(center),
                                                         0 if clip is None else clip.data_ptr(), int(update)))
        # written through pointers: tell autograd and every version-keyed cache
        if center or clip is not None:
            torch.autograd.graph.increment_version(weight)
        if update:
            torch.autograd.graph.increment_version(code)
        return wb, mean, rstd

    setup_context = staticmethod(_save_input_and_stats)

    @staticmethod
    def backward(ctx, grad: Tensor, _mean_grad: Tensor, _rstd_grad: Tensor) -> tuple[Tensor | None, ...]:
        weight, mean, rstd = ctx.saved_tensors
        return _native_backward(weight, mean, rstd, grad, centered=True, sign_slope=True), None, None, None, None


def takes_native_siman_weight(weight: Tensor, code: Tensor) -> bool:
    """Whether SignMagnitudeCode runs this weight: native kernels in use, dense float32 CPU tensors."""
    return (_kernels["forward"] is _native_forward and _takes_native(weight) and weight.is_contiguous()
            and code.dtype == torch.float32 and code.is_contiguous() and code.numel() == weight.numel()
            and code.device == weight.device)


def sign_magnitude_code(weight: Tensor, code: Tensor, center: bool, update: bool,
                        clip: Tensor | None = None) -> Tensor:
    return SignMagnitudeCode.apply(weight, code, center, clip, update)[0]


def _native_scale_backward(y: Tensor, alpha: Tensor, grad: Tensor,
                           inv_alpha: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """(grad * alpha, sum over (N, H, W) of grad * y) in one sweep. With `inv_alpha` (1 / alpha,
    float32 [C]), `y` holds y * alpha for integer-valued y with |y| < 2^21 (a packed binary conv's
    output, bnnkit._packed_train), and the kernel recovers y exactly."""
    if grad.stride() != y.stride() or grad.dtype != y.dtype or grad.device != y.device:
        grad = torch.empty_like(y).copy_(grad)
    a = alpha.detach().reshape(-1).contiguous()
    dy, dalpha = torch.empty_like(y), torch.empty(a.shape[0], dtype=torch.float32)
    N, C, H, W = y.shape
    nhwc = not y.is_contiguous()  # _takes_native: NCHW or channels-last
    if inv_alpha is not None:
        assert inv_alpha.dtype == torch.float32 and inv_alpha.shape == (C,) and inv_alpha.is_contiguous()
    _native().scale_backward(torch.get_num_threads(), (grad.data_ptr(), y.data_ptr(), dy.data_ptr(), y.numel(),
                                                       a.data_ptr(), dalpha.data_ptr(), N, C, H * W, int(nhwc),
                                                       0 if inv_alpha is None else inv_alpha.data_ptr()))
    return dy, dalpha.view_as(alpha)


def channel_scale(y: Tensor, alpha: Tensor) -> Tensor:
    return ChannelScale.apply(y, alpha) if torch.is_grad_enabled() else y * alpha


class AvgPoolPad(torch.autograd.Function):
    """F.pad(F.avg_pool2d(x, k), (0, 0, 0, 0, pad, pad)) of an NCHW float32 CPU tensor in one
    native pass, with the roundings of PyTorch's CPU kernels (csrc/bnn_act.cpp, AvgPoolArgs):
    forward (((0 + x0) + x1) + ...) / k^2 over each window row by row, zero channels around;
    backward 0 + g / k^2 to each input of the window, 0 outside every window. PyTorch's NCHW
    average pooling reads each window in a scalar loop: 256x16x32x32 9 ms, about 2 GB/s."""

    @staticmethod
    def forward(x: Tensor, k: int, pad: int) -> Tensor:
        N, C, H, W = x.shape
        out = x.new_empty(N, C + 2 * pad, H // k, W // k)
        _native().avg_pool(torch.get_num_threads(), (x.data_ptr(), x.numel(), out.data_ptr(), out.numel(),
                                                     N, C, H, W, k, pad, 0))
        return out

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        x, ctx.k, ctx.pad = inputs
        ctx.shape = tuple(x.shape)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, None, None]:
        N, C, H, W = ctx.shape
        grad = grad.contiguous()
        dx = grad.new_empty(N, C, H, W)
        _native().avg_pool(torch.get_num_threads(), (grad.data_ptr(), grad.numel(), dx.data_ptr(), dx.numel(),
                                                      N, C, H, W, ctx.k, ctx.pad, 1))
        return dx, None, None


def avg_pool_pad(x: Tensor, k: int, pad: int = 0) -> Tensor:
    """F.pad(F.avg_pool2d(x, k), (0, 0, 0, 0, pad, pad)): k x k average pooling with stride k and
    `pad` zero channels on each side, the same bits either way (AvgPoolPad natively for NCHW
    float32 CPU tensors with the native kernels in use, PyTorch's ops elsewhere, and for torch.fx's
    proxies, so that an exported graph records the PyTorch ops)."""
    if (isinstance(x, Tensor) and kernels_in_use() != "eager" and _takes_native(x) and x.is_contiguous()
            and not x.is_contiguous(memory_format=torch.channels_last) and min(x.shape[2:]) >= k >= 1 and pad >= 0):
        return AvgPoolPad.apply(x, k, pad)
    y = F.avg_pool2d(x, k)
    return F.pad(y, (0, 0, 0, 0, pad, pad)) if pad else y


class StandardizedTriangleSign(torch.autograd.Function):
    """RBNN's input path in two native sweeps (CPU float32, native kernels in use).
    Forward sign(x - mean_n), per sample over (C,H,W), with rstd = 1/std_n (unbiased, no eps).
    Backward: the triangle max(0, k (h - |t2 y|)) on y = (x - mean) * rstd, then the exact
    gradient of the standardisation:
        dx = rstd * (g' - mean(g') - y * sum(g' * y) / (n - 1)),   g' = g * max(0, k (h - |t2 y|)),
    what autograd computes through rbnn.py's eager (x - mean) / std and TriangleSign."""

    @staticmethod
    def forward(x: Tensor, triangle: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        N = x.shape[0]
        out, mean, rstd = torch.empty_like(x), x.new_empty(N, 1, 1, 1), x.new_empty(N, 1, 1, 1)
        _native().act_triangle_forward(torch.get_num_threads(), (x.data_ptr(), x.numel(), 0, out.data_ptr(),
                                                                 mean.data_ptr(), rstd.data_ptr(), N, x.numel() // N,
                                                                 1, 0, triangle.data_ptr()))
        return out, mean, rstd

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        _, mean, rstd = output
        ctx.mark_non_differentiable(mean, rstd)
        ctx.save_for_backward(inputs[0], mean, rstd, inputs[1])

    @staticmethod
    def backward(ctx, grad: Tensor, _mean_grad: Tensor, _rstd_grad: Tensor) -> tuple[Tensor, None]:
        x, mean, rstd, triangle = ctx.saved_tensors
        if grad.stride() != x.stride() or grad.dtype != x.dtype:
            grad = torch.empty_like(x).copy_(grad)  # the kernel pairs elements by position in memory
        dx = torch.empty_like(x)
        N = x.shape[0]
        _native().act_triangle_backward(torch.get_num_threads(), (x.data_ptr(), x.numel(), grad.data_ptr(),
                                                                  dx.data_ptr(), mean.data_ptr(), rstd.data_ptr(), N,
                                                                  x.numel() // N, 1, 0, triangle.data_ptr()))
        return dx, None


def takes_native_activation(x: Tensor) -> bool:
    """Whether a method's fused native activation kernel may run on x: native kernels in use and a
    dense float32 CPU tensor (NCHW or channels-last) outside any tracer."""
    return _kernels["forward"] is _native_forward and _takes_native(x)


def standardized_triangle_sign(x: Tensor, k: float, height: float, t2: float) -> Tensor:
    """sign(x - mean_n) with RBNN's triangle backward through the standardisation, natively; for
    takes_native_activation tensors. k, height and t2 are float32 values (as TriangleSign rounds them)."""
    return StandardizedTriangleSign.apply(x, torch.tensor([k, height, t2], dtype=torch.float32))[0]


def standardized_approx_sign(x: Tensor) -> Tensor:
    return StandardizedApproxSign.apply(x)[0]


def scaled_approx_sign(x: Tensor) -> Tensor:
    return ScaledApproxSign.apply(x)[0]


if os.environ.get("BNNKIT_COMPILE", "0") == "1":
    set_compiled(True)
