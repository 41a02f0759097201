"""Exact, fast training-mode forward of binary convolutions on CPU through the deploy runtime's
XOR-popcount kernels.

A binary conv's forward multiplies sign() inputs (+1, -1, or 0 for an input exactly at its
threshold) with ±1 weights, in training as in eval: every output of the float convolution is an
exact integer whatever the order of its sums, so the packed kernels give the same integers
(zero padding and ties handled as in bnnkit._packed_eval, docs/deploy.md), and their epilogue
multiplies by alpha with the one float32 rounding of `y * alpha`. The forward is the same bits.

The backward stays float, as the gradients are real: it calls the aten::convolution_backward
that autograd's ConvolutionBackward0 calls, with the same saved ±1 input and weight, so the
gradients are the same bits too. alpha's gradient, sum(g * y), needs y: it is recovered exactly
from the saved output y * alpha (integer |y| < 2^21 and |alpha| within [2^-60, 2^60]), so the
layer keeps one activation-sized tensor fewer than conv2d followed by `* alpha`. Like
torch.exp's, this output is saved for the backward: modifying it in place before the backward
raises autograd's in-place error (the published models feed it to a BatchNorm).

BinaryConv2d.forward calls `packed_train_forward` after the quantizers and falls back to
F.conv2d wherever it returns None: with the eager or compiled kernels (`--kernels`), off CPU, for
non-float32 or non-dense inputs, under autocast or a functorch transform, for weights that are
not exactly ±1 (XNOR's ±mean|w|, BiPer's stage-1 sin(f*w), a weight exactly 0), for inputs whose
quantizer is not `sign_valued`, or for an alpha the recovery cannot take. `set_enabled(False)` or
BNNKIT_PACKED_TRAIN=0 turns it off.
"""
from __future__ import annotations

import os

import torch
from torch import Tensor, nn

from . import functional
from ._packed_eval import _native, layer_packed_conv

# A layer is a bnnkit.nn.layers.BinaryConv2d (which calls in here), typed as the nn.Conv2d it extends.

_state = {"enabled": os.environ.get("BNNKIT_PACKED_TRAIN", "1") != "0"}
_ALPHA_RANGE = (2.0 ** -60, 2.0 ** 60)  # |y * alpha| stays a normal float, and y comes back exactly
_MAX_DOT = 2 ** 21  # |y| <= in-channels per group x kernel window: recovered from y * alpha below this


def set_enabled(enabled: bool) -> bool:
    """Turn the packed training forward on or off; returns the previous setting."""
    old, _state["enabled"] = _state["enabled"], bool(enabled)
    return old


def enabled() -> bool:
    return _state["enabled"]


class PackedBinaryConv(torch.autograd.Function):
    """conv2d(xb, wb) * alpha for sign-valued xb and ±1 wb, forward on packed bits.
    Backward: dy = g * alpha and dalpha = sum(g * y) in one native sweep (y recovered from the
    output), then aten::convolution_backward(dy, xb, wb) as autograd computes it for conv2d."""

    @staticmethod
    def forward(xb: Tensor, wb: Tensor, alpha: Tensor | None, layer: nn.Conv2d,
                inv_alpha: Tensor | None, w_bits: Tensor) -> Tensor:
        from ..native.affine import epilogue_affine

        native = _native()
        O = wb.shape[0]
        prescale = torch.ones(O) if alpha is None else alpha.detach().reshape(-1).clone()
        conv = _layer_conv(layer, w_bits, prescale, *epilogue_affine(None, O))
        threads, isa, pad = torch.get_num_threads(), native.resolve_isa(), tuple(layer.padding)
        bits, _, ties = native.pack(xb.detach(), groups=layer.groups, pad=pad, center=False, isa=isa, threads=threads,
                                    return_thresholds=False)
        # conv2d's layout, which later ops (BatchNorm's kernel choice, so its rounding) follow
        channels_last = _strides_like_channels_last(xb) or _strides_like_channels_last(wb)
        return conv(bits, xb.shape[2], xb.shape[3], pad, isa=isa, threads=threads, ties=ties, nchw=not channels_last)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        xb, wb, alpha, layer, inv_alpha, _ = inputs
        ctx.geometry = (tuple(layer.stride), tuple(layer.padding), tuple(layer.dilation), layer.groups)
        ctx.save_for_backward(xb, wb, alpha, inv_alpha, output if alpha is not None else None)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:
        xb, wb, alpha, inv_alpha, out = ctx.saved_tensors
        need_x, need_w, need_alpha = ctx.needs_input_grad[:3]
        dalpha = None
        if alpha is None:
            dy = grad
        elif need_alpha:
            dy, dalpha = functional._native_scale_backward(out, alpha, grad, inv_alpha)
        else:
            dy = grad * alpha
        dx = dw = None
        if need_x or need_w:
            stride, padding, dilation, groups = ctx.geometry
            dx, dw, _ = torch.ops.aten.convolution_backward(dy, xb, wb, None, stride, padding, dilation, False,
                                                            [0, 0], groups, [need_x, need_w, False])
        return dx, dw, dalpha, None, None, None


def _layer_conv(layer: nn.Conv2d, w_bits: Tensor, prescale: Tensor, scale: Tensor, bias: Tensor):
    """The layer's PackedConv for these packed weights and constants. The last one is kept on the
    layer: a step that left the layer's signs as they were (most layers at a small learning rate)
    reuses its weight buffers, and one that changed them reuses its geometry."""
    last = layer.__dict__.get("_packed_train_conv")
    if last is None or last.geometry != _geometry(layer) or last.w_bits.shape != w_bits.shape:
        conv = layer_packed_conv(layer, w_bits, prescale, scale, bias)
    elif torch.equal(last.w_bits, w_bits):
        conv = last.with_epilogue(scale, bias, prescale=prescale)
    else:
        conv = last.with_weights(w_bits, scale, bias, prescale=prescale)
    layer.__dict__["_packed_train_conv"] = conv
    return conv


def _geometry(layer: nn.Conv2d) -> tuple:
    return (layer.in_channels, tuple(layer.kernel_size), tuple(layer.stride), tuple(layer.padding),
            tuple(layer.dilation), layer.groups)


def _strides_like_channels_last(t: Tensor) -> bool:
    """Tensor.suggest_memory_format() == channels_last for a 4-d tensor: c10's
    is_channels_last_strides_2d, whose answer for ambiguous strides (a 1x1 map or kernel) decides,
    with the weight's, the layout of CPU conv2d's output."""
    sizes, strides = t.shape, t.stride()
    if strides[1] == 0:
        return False
    low = 0
    for d in (1, 3, 2, 0):
        if sizes[d] == 0 or strides[d] < low or (d == 0 and low == strides[1]):
            return False
        low = strides[d] * sizes[d]
    return True


def _inverse_alpha(alpha: Tensor | None, channels: int) -> tuple[bool, Tensor | None]:
    """Whether the kernels take this alpha, and 1 / alpha [C] for recovering y in the backward."""
    if alpha is None:
        return True, None
    if not (alpha.dtype == torch.float32 and alpha.device.type == "cpu" and alpha.numel() == channels
            and alpha.shape == (channels, 1, 1)):
        return False, None
    flat = alpha.detach().reshape(-1)
    magnitude = flat.abs()
    if not bool(((magnitude >= _ALPHA_RANGE[0]) & (magnitude <= _ALPHA_RANGE[1])).all()):
        return False, None
    return True, (1 / flat).contiguous()


def packed_train_forward(layer: nn.Conv2d, xb: Tensor, wb: Tensor) -> Tensor | None:
    """conv2d(xb, wb) * alpha (alpha = layer.alpha, or none) on packed bits, for the quantizers'
    outputs xb and wb, differentiable in all three; or None where that path does not apply."""
    if not (_state["enabled"] and functional.kernels_in_use() == "native"
            and getattr(layer.input_quantizer, "sign_valued", False)
            and functional._takes_native(xb) and xb.shape[1] == layer.in_channels
            and wb.dtype == torch.float32 and wb.device.type == "cpu" and wb.dim() == 4
            and not torch._C._functorch.is_functorch_wrapped_tensor(wb)
            and not torch.is_autocast_enabled("cpu")
            and layer.padding_mode == "zeros" and not isinstance(layer.padding, str)
            and wb.shape[1] * wb.shape[2] * wb.shape[3] < _MAX_DOT):
        return None
    takes_alpha, inv_alpha = _inverse_alpha(layer.alpha, wb.shape[0])
    if not takes_alpha:
        return None
    w_bits = _native().pack_weight_signs(wb.detach(), torch.get_num_threads())  # None unless exactly ±1
    if w_bits is None:
        return None
    return PackedBinaryConv.apply(xb, wb, layer.alpha, layer, inv_alpha, w_bits)
