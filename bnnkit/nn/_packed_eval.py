"""Exact, fast eval-mode binary convolutions on CPU through the deploy runtime's XOR-popcount kernels.

In eval mode without autograd a binary conv multiplies ±1 weights with sign() inputs (+1, -1, or 0
for an input exactly at its threshold), so every output of the float convolution is an exact
integer, whatever the order of its sums. The packed kernels compute the same integers (zero
padding, ties and all, see docs/deploy.md), so the model's output is the same to the last bit,
and the convolution runs on 1-bit words instead of float32 (docs/throughput.md has the figures).

BinaryConv2d.forward calls `packed_forward` and falls back to F.conv2d wherever it returns None: in
training or with autograd on, under autocast, off CPU, for non-float32 inputs, for weights that are
not exactly ±1 (XNOR's ±mean|w|, a weight exactly 0; a quantizer's `sign_and_scale` gives ReActNet's
step-2 a_o sign(W) as ±1 and a per-channel prescale instead), for real inputs (1w32a) or input quantizers
not declared `sign_valued`, or when the native kernels are not built. `set_enabled(False)` or
BNNKIT_PACKED_EVAL=0 turns it off.

Models write each `act(bn(conv(x)) + residual)` as `conv_bn(conv, bn, x, residual, act)`
(bnnkit.layers): there the kernel's epilogue also applies the eval-mode BatchNorm, as the fused
multiply-add PyTorch's CPU kernel computes (deploy/_affine.py), adds the residual with one float32
rounding and applies a PReLU or Hardtanh with PyTorch's formula, so none of them costs a pass of
its own and the bits are still the same. Pooled blocks, `act(bn(pool(conv(x))))`, are written
`conv_pool(conv, pool, x, bn, act)`: the conv writes channels-last and one native pass max-pools,
applies the BatchNorm and the nonlinearity and stores NCHW (`pool_forward`).
"""
from __future__ import annotations

import os
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules import module as _torch_module

# A layer is a bnnkit.nn.layers.BinaryConv2d (which calls in here), typed as the nn.Conv2d it extends.

_state = {"enabled": os.environ.get("BNNKIT_PACKED_EVAL", "1") != "0", "native": None}


def set_enabled(enabled: bool) -> bool:
    """Turn the packed eval path on or off; returns the previous setting."""
    old, _state["enabled"] = _state["enabled"], bool(enabled)
    return old


def enabled() -> bool:
    return _state["enabled"]


def _native():
    if _state["native"] is None:
        from ..native import kernels as _native
        _state["native"] = _native if _native.try_lib() is not None else False
    return _state["native"]


class _PackedWeights:
    """The packed form of one conv's binary weights, scale and folded BatchNorm, rebuilt only when
    one of them changes; for a pure weight quantizer also the latent weights and settings the
    signs came from."""

    __slots__ = ("signs", "weight_scale", "alpha", "bn_state", "conv", "source")

    def __init__(self, signs: Tensor, weight_scale: Tensor | None, alpha: Tensor, bn_state: tuple | None, conv,
                 source: tuple | None) -> None:
        self.signs, self.weight_scale, self.alpha, self.bn_state, self.conv, self.source = \
            signs, weight_scale, alpha, bn_state, conv, source


class _RealWeights:
    """A pure weight quantizer's source whose output was not exactly ±1: until it changes, packed
    eval returns at once instead of running the quantizer and the packing to find that again
    (BiPer's stage 1 ran sin three times a conv: conv_bn's try, the conv's own try, the float path)."""

    __slots__ = ("source",)

    def __init__(self, source: tuple) -> None:
        self.source = source


def _quantizer_source(layer: nn.Conv2d) -> tuple | None:
    """What a pure weight quantizer's output is a function of: its settings, its mode and the
    latent weights (compared bit for bit, as int32); None for a quantizer that is not pure."""
    q, w = layer.weight_quantizer, layer.weight
    if not getattr(q, "pure", False) or w.dtype != torch.float32 or not _no_hooks(q):
        return None
    return (type(q), q.training, tuple(getattr(q, name) for name in q.settings)), w.detach()


def _same_source(cached: tuple | None, now: tuple | None) -> bool:
    return (cached is not None and now is not None and cached[0] == now[0] and cached[1].shape == now[1].shape
            and torch.equal(cached[1].view(torch.int32), now[1].view(torch.int32)))


def _bn_state(bn: nn.BatchNorm2d) -> tuple:
    return (bn.running_mean, bn.running_var, bn.weight, bn.bias, bn.eps)


def _bn_snapshot(bn: nn.BatchNorm2d) -> tuple:
    """A copy of _bn_state(bn), for _same_bn to compare the module with later."""
    return tuple(t.detach().clone() if isinstance(t, Tensor) else t for t in _bn_state(bn))


def _same_bn(state: tuple | None, bn: nn.BatchNorm2d | None) -> bool:
    if state is None or bn is None:
        return state is None and bn is None
    return state[4] == bn.eps and all(
        (a is None and b is None) or (a is not None and b is not None and torch.equal(a, b))
        for a, b in zip(state[:4], _bn_state(bn)[:4]))


def _no_hooks(module: nn.Module) -> bool:
    return not (module._forward_hooks or module._forward_pre_hooks or _torch_module._global_forward_hooks
                or _torch_module._global_forward_pre_hooks)


def _foldable(bn: nn.Module, channels: int) -> bool:
    """An eval-mode BatchNorm2d whose output fma(x, a, b) reproduces bit for bit (_affine.bn_affine)."""
    return (type(bn) is nn.BatchNorm2d and not bn.training and bn.running_mean is not None
            and bn.running_var is not None and bn.num_features == channels and _no_hooks(bn)
            and all(t is None or (t.dtype == torch.float32 and t.device.type == "cpu")
                    for t in _bn_state(bn)[:4]))


def layer_packed_conv(layer: nn.Conv2d, w_bits: Tensor, prescale: Tensor, scale: Tensor, bias: Tensor):
    """The deploy runtime's PackedConv for this layer's geometry: packed weights w_bits, epilogue
    fma(y * prescale, scale, bias) per output channel."""
    return _native().PackedConv(w_bits, scale, bias, prescale=prescale, in_channels=layer.in_channels,
                                kernel=tuple(layer.kernel_size), stride=tuple(layer.stride),
                                padding=tuple(layer.padding), dilation=tuple(layer.dilation), groups=layer.groups)


def _kernel_nonlinearity(nonlinearity, channels: int):
    """The kernel's form of a PReLU or Hardtanh (native.kernels.Nonlinearity), or None for any
    other callable, which then runs as given."""
    nat = _native()
    if nonlinearity is F.hardtanh:
        return nat.Nonlinearity.hardtanh(-1.0, 1.0)
    if not isinstance(nonlinearity, nn.Module) or not _no_hooks(nonlinearity):
        return None
    if type(nonlinearity) is nn.Hardtanh:
        return nat.Nonlinearity.hardtanh(nonlinearity.min_val, nonlinearity.max_val)
    if (type(nonlinearity) is nn.PReLU and nonlinearity.weight.dtype == torch.float32
            and nonlinearity.weight.device.type == "cpu" and nonlinearity.weight.numel() in (1, channels)):
        return nat.Nonlinearity.prelu(nonlinearity.weight, channels)
    return None


def packed_forward(layer: nn.Conv2d, x: Tensor, bn: nn.Module | None = None,
                   residual: Tensor | None = None, nonlinearity: Callable[[Tensor], Tensor] | None = None,
                   layout: torch.memory_format | None = None) -> Tensor | None:
    """The eval-mode output conv2d(input_quantizer(x), weight_quantizer(weight)) * alpha computed
    on packed bits, in x's memory format, or None where that path does not apply. The kernel's
    epilogue multiplies the exact integer by alpha with one float32 rounding, as `y * alpha` does.
    With `bn` (called by conv_bn) it returns bn(y), with `residual` bn(y) + residual, and with
    `nonlinearity` that applied last, all in the kernel's epilogue with PyTorch's roundings (None
    where `bn` cannot be folded; a nonlinearity other than PReLU and Hardtanh, or a residual in
    another layout, runs after the kernel). `layout` (torch.contiguous_format or
    torch.channels_last) overrides the output's memory format; the caller then owns the layout
    the float path would have given later reductions.
    Calls the weight quantizer exactly as the float path does (its side effects, such as SiMaN's
    in-place centring of the latent weights, are part of the model's behaviour), except a pure one
    (WeightQuantizer.pure) whose weights, settings and mode are those of its cached result."""
    if (not _state["enabled"] or layer.training or torch.is_grad_enabled()
            or not getattr(layer.input_quantizer, "sign_valued", False)
            or x.device.type != "cpu" or x.dtype != torch.float32 or x.dim() != 4
            or torch.is_autocast_enabled("cpu") or layer.padding_mode != "zeros" or isinstance(layer.padding, str)):
        return None
    if bn is not None and not (_foldable(bn, layer.out_channels) and _no_hooks(layer)):
        return None
    native = _native()
    if not native:
        return None
    key = "_packed_weights" if bn is None else "_packed_weights_bn"
    cache = layer.__dict__.get(key)
    source = _quantizer_source(layer)
    if isinstance(cache, _RealWeights):
        if _same_source(cache.source, source):
            return None  # these very weights gave real values (BiPer's stage 1): the float path runs
        cache = None
    # a pure quantizer of unchanged weights would give the cached signs again: a compare of the
    # weights' bits instead of the quantizer and a compare of its output (BiPer's sin over
    # ResNet-18's 11 M weights, 30 ms an eval batch)
    same_signs = cache is not None and _same_source(cache.source, source)
    if same_signs:
        signs, weight_scale = cache.signs, cache.weight_scale
    else:
        factor = getattr(layer.weight_quantizer, "sign_and_scale", None)
        factored = None if factor is None else factor(layer.weight)  # the layer computes conv(x_b, S) * a
        signs, weight_scale = factored if factored is not None else (layer.weight_quantizer(layer.weight), None)
    if signs.dtype != torch.float32 or signs.device.type != "cpu" or signs.dim() != 4:
        return None
    O = signs.shape[0]
    if weight_scale is not None and layer.alpha is not None:
        return None  # two scales, two roundings: the float path keeps them
    alpha = weight_scale if weight_scale is not None else \
        torch.ones(O) if layer.alpha is None else layer.alpha.detach().reshape(-1)
    if alpha.dtype != torch.float32 or alpha.shape != (O,):
        return None
    if not same_signs and cache is not None and cache.signs.shape == signs.shape and torch.equal(cache.signs, signs):
        same_signs = True
        if source is not None:  # new latent weights with the same signs: the next call skips the quantizer
            cache.source = (source[0], source[1].clone())
    if not (same_signs and torch.equal(cache.alpha, alpha) and _same_bn(cache.bn_state, bn)):
        w_bits = None if same_signs else native.pack_weight_signs(signs.detach(), torch.get_num_threads())
        if not same_signs and w_bits is None:  # not exactly ±1
            layer.__dict__[key] = None if source is None else _RealWeights((source[0], source[1].clone()))
            return None
        from ..native.affine import epilogue_affine

        scale, bias = epilogue_affine(bn, O)
        if same_signs:  # a training step moved alpha or the BatchNorm statistics only
            conv = cache.conv.with_epilogue(scale, bias, prescale=alpha.clone())
        else:
            conv = layer_packed_conv(layer, w_bits, alpha.clone(), scale, bias)
        bn_state = None if bn is None else _bn_snapshot(bn)
        source = None if source is None else (source[0], source[1].clone())
        cache = layer.__dict__[key] = _PackedWeights(signs.detach().clone(), None if weight_scale is None else
                                                     weight_scale.clone(), alpha.clone(), bn_state, conv, source)
    conv = cache.conv
    centered = bool(getattr(layer.input_quantizer, "centered", False))
    threads = torch.get_num_threads()
    isa = native.resolve_isa()
    pad = tuple(layer.padding)
    # torch_mean: the quantizer's own reduction x.mean(dim=(1, 2, 3)), hence its rounding
    bits, _, ties = native.pack(x, groups=layer.groups, pad=pad, center=centered, isa=isa, threads=threads,
                               torch_mean=True, return_thresholds=False)
    # later reductions (the next SiMaN mean, pooling) must see the layout the float conv would give
    nchw = not native.is_channels_last(x) if layout is None else layout == torch.contiguous_format
    Ho, Wo = conv.out_size(x.shape[2], x.shape[3])
    # The residual and nonlinearity are fused where the residual has the output's layout (in
    # NCHW too since the kernel stores whole channel rows: ResNet-20's 16-channel 32x32 layer at
    # batch 256, conv + add + PReLU 6.9 ms fused against 9.8 ms in three passes,
    # benchmarks/bconv_epilogue.py)
    fused_residual = residual is not None and (
        residual.dtype == torch.float32 and residual.device.type == "cpu" and tuple(residual.shape) == (x.shape[0], O, Ho, Wo)
        and residual.is_contiguous(memory_format=torch.contiguous_format if nchw else torch.channels_last))
    kernel_nonlin = None
    if nonlinearity is not None and (residual is None or fused_residual):
        kernel_nonlin = _kernel_nonlinearity(nonlinearity, O)
    out = conv(bits, x.shape[2], x.shape[3], pad, isa=isa, threads=threads, ties=ties, nchw=nchw,
               residual=residual if fused_residual else None, nonlinearity=kernel_nonlin)
    if residual is not None and not fused_residual:
        out = out + residual  # PyTorch's layout rules decide the result's
    return out if nonlinearity is None or kernel_nonlin is not None else nonlinearity(out)


def pool_forward(layer: nn.Conv2d, pool: nn.Module, x: Tensor, bn: nn.Module | None,
                 nonlinearity: Callable[[Tensor], Tensor] | None) -> Tensor | None:
    """nonlinearity(bn(pool(layer(x)))) in packed eval for an NCHW x and an nn.MaxPool2d, NCHW like
    the float path's. The conv writes channels-last; for a pool without padding, dilation or ceil
    mode one native pass then pools, applies a foldable BatchNorm (as the conv epilogue would) and
    a PReLU or Hardtanh, and stores NCHW; other pools run channels-last in PyTorch; a BatchNorm or
    nonlinearity the pass cannot take runs after it in PyTorch. None where packed eval does not
    apply (the caller runs the float path)."""
    if not (type(pool) is nn.MaxPool2d and not pool.return_indices and _no_hooks(pool)):
        return None
    y = packed_forward(layer, x, layout=torch.channels_last)
    if y is None:
        return None
    kernel, stride, padding, dilation = (_pair(v) for v in (pool.kernel_size, pool.stride or pool.kernel_size,
                                                             pool.padding, pool.dilation))
    native_pool = (padding == (0, 0) and dilation == (1, 1) and not pool.ceil_mode
                   and y.shape[2] >= kernel[0] and y.shape[3] >= kernel[1])
    fold = native_pool and bn is not None and _foldable(bn, y.shape[1])
    kernel_nonlin = None
    if native_pool and nonlinearity is not None and (bn is None or fold):
        kernel_nonlin = _kernel_nonlinearity(nonlinearity, y.shape[1])
    if native_pool:
        scale, bias = _bn_constants(bn) if fold else (None, None)
        out = _native().max_pool_to_nchw(y, kernel, stride, torch.get_num_threads(), scale, bias, kernel_nonlin)
    else:
        out = pool(y).contiguous()  # other geometries: PyTorch's channels-last pooling
    if bn is not None and not fold:
        out = bn(out)
    return out if nonlinearity is None or kernel_nonlin is not None else nonlinearity(out)


def _pair(v) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _bn_constants(bn: nn.BatchNorm2d) -> tuple[Tensor, Tensor]:
    """bn_affine(bn), kept on the module until its statistics or affine parameters change."""
    cached = bn.__dict__.get("_packed_eval_affine")
    if cached is not None and _same_bn(cached[0], bn):
        return cached[1]
    from ..native.affine import bn_affine

    constants = bn_affine(bn)
    bn.__dict__["_packed_eval_affine"] = (_bn_snapshot(bn), constants)
    return constants
