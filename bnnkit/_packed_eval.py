"""Exact, fast eval-mode binary convolutions on CPU through the deploy runtime's XOR-popcount kernels.

In eval mode without autograd a binary conv multiplies ±1 weights with sign() inputs (+1, -1, or 0
for an input exactly at its threshold), so every output of the float convolution is an exact
integer, whatever the order of its sums. The packed kernels compute the same integers (zero
padding, ties and all, see docs/deploy.md), so the model's output is the same to the last bit,
and the convolution runs on 1-bit words instead of float32 (docs/throughput.md has the figures).

BinaryConv2d.forward calls `packed_forward` and falls back to F.conv2d wherever it returns None: in
training or with autograd on, under autocast, off CPU, for non-float32 inputs, for weights that are
not exactly ±1 (XNOR's ±mean|w|, a weight exactly 0), for real inputs (1w32a) or input quantizers
not declared `sign_valued`, or when the native kernels are not built. `set_enabled(False)` or
BNNKIT_PACKED_EVAL=0 turns it off.
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from .layers import BinaryConv2d

_state = {"enabled": os.environ.get("BNNKIT_PACKED_EVAL", "1") != "0", "native": None}


def set_enabled(enabled: bool) -> bool:
    """Turn the packed eval path on or off; returns the previous setting."""
    old, _state["enabled"] = _state["enabled"], bool(enabled)
    return old


def enabled() -> bool:
    return _state["enabled"]


def _native():
    if _state["native"] is None:
        try:
            from .deploy import _native
            _native.lib()
            _state["native"] = _native
        except ImportError:
            _state["native"] = False
    return _state["native"]


class _PackedWeights:
    """The packed form of one conv's binary weights and scale, rebuilt only when they change."""

    __slots__ = ("signs", "alpha", "conv")

    def __init__(self, signs: Tensor, alpha: Tensor, conv) -> None:
        self.signs, self.alpha, self.conv = signs, alpha, conv


def packed_forward(layer: "BinaryConv2d", x: Tensor) -> Tensor | None:
    """The eval-mode output conv2d(input_quantizer(x), weight_quantizer(weight)) * alpha computed
    on packed bits, in x's memory format, or None where that path does not apply. The kernel's
    epilogue multiplies the exact integer by alpha with one float32 rounding, as `y * alpha` does.
    Calls the weight quantizer exactly as the float path does (its side effects, such as SiMaN's
    in-place centring of the latent weights, are part of the model's behaviour)."""
    if (not _state["enabled"] or layer.training or torch.is_grad_enabled()
            or not getattr(layer.input_quantizer, "sign_valued", False)
            or x.device.type != "cpu" or x.dtype != torch.float32 or x.dim() != 4
            or torch.is_autocast_enabled("cpu") or layer.padding_mode != "zeros" or isinstance(layer.padding, str)):
        return None
    native = _native()
    if not native:
        return None
    signs = layer.weight_quantizer(layer.weight)
    O = signs.shape[0]
    alpha = torch.ones(O) if layer.alpha is None else layer.alpha.detach().reshape(-1)
    if alpha.dtype != torch.float32 or alpha.shape != (O,):
        return None
    cache = layer.__dict__.get("_packed_weights")
    if (cache is None or cache.signs.shape != signs.shape or not torch.equal(cache.signs, signs)
            or not torch.equal(cache.alpha, alpha)):
        if not bool((signs.abs() == 1).all()):
            layer.__dict__["_packed_weights"] = None
            return None
        from .deploy._bits import pack_signs
        # fma(y * alpha, 1, -0.0) is y * alpha for every value, -0.0 included
        conv = native.PackedConv(pack_signs(signs < 0), torch.ones(O), torch.full((O,), -0.0), prescale=alpha.clone(),
                                 in_channels=layer.in_channels, kernel=tuple(layer.kernel_size),
                                 stride=tuple(layer.stride), padding=tuple(layer.padding),
                                 dilation=tuple(layer.dilation), groups=layer.groups)
        cache = layer.__dict__["_packed_weights"] = _PackedWeights(signs.detach().clone(), alpha.clone(), conv)
    conv = cache.conv
    threshold = None
    if getattr(layer.input_quantizer, "centered", False):
        threshold = x.mean(dim=(1, 2, 3))  # the quantizer's own reduction, hence its rounding
    threads = torch.get_num_threads()
    isa = native.resolve_isa()
    pad = tuple(layer.padding)
    bits, _, ties = native.pack(x, groups=layer.groups, pad=pad, center=threshold is not None, isa=isa,
                               threads=threads, thresholds=threshold)
    # later reductions (the next SiMaN mean, pooling) must see the layout the float conv would give
    return conv(bits, x.shape[2], x.shape[3], pad, isa=isa, threads=threads, ties=ties, nchw=not native.is_channels_last(x))
