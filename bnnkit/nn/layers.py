"""The binary convolution every bnnkit model is built from."""
from __future__ import annotations

from typing import Callable, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._packed_eval import _no_hooks, packed_forward, pool_forward
from ._packed_train import packed_train_forward
from .functional import channel_scale



class ConvParts(Protocol):
    """What a BinaryConv2d asks of whoever builds it (a bnnkit.methods.Method): its scale and quantizers."""

    def make_scale(self, conv: "BinaryConv2d") -> nn.Parameter | None: ...

    def make_weight_quantizer(self, conv: "BinaryConv2d") -> nn.Module: ...

    def make_input_quantizer(self, conv: "BinaryConv2d") -> nn.Module: ...


class BinaryConv2d(nn.Conv2d):
    """y = conv2d(input_quantizer(x), weight_quantizer(w)) * alpha.

    `weight` holds the latent real weights; `alpha` is the method's learned per-output-channel
    scale [O,1,1] (None when the method has none). Padding is zero padding of the already
    binarized input, as in both published codes. With `binary_input=False` the input stays real
    (BiPer's 1w32a variant). Without autograd, a weight quantizer that declares
    `sign_and_scale` (ReActNet's step 2) is evaluated as conv2d(input_quantizer(x), S) * a: exact
    integers, then one rounding per output, as its 1-bit kernels and the deployed file compute it.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 padding: int = 0, dilation: int = 1, groups: int = 1, *, method: ConvParts,
                 binary_input: bool = True) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias=False)
        # Order matters for seeded runs: the parent has drawn the weight; the method may draw alpha next.
        alpha = method.make_scale(self)
        self.register_parameter("alpha", alpha)
        self.binary_input = binary_input
        self.weight_quantizer = method.make_weight_quantizer(self)
        self.input_quantizer = method.make_input_quantizer(self) if binary_input else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        y = packed_forward(self, x)  # eval on CPU: the same result from 1-bit kernels, else None
        if y is not None:
            return y
        factor = None if torch.is_grad_enabled() else getattr(self.weight_quantizer, "sign_and_scale", None)
        factored = None if factor is None else factor(self.weight)
        if factored is not None:
            signs, scale = factored
            y = F.conv2d(self.input_quantizer(x), signs, None, self.stride, self.padding, self.dilation, self.groups)
            y = y * scale.reshape(1, -1, 1, 1)
            return y if self.alpha is None else channel_scale(y, self.alpha)
        xb, wb = self.input_quantizer(x), self.weight_quantizer(self.weight)
        y = packed_train_forward(self, xb, wb)  # training on CPU: the same bits forward and backward, else None
        if y is not None:
            return y
        y = F.conv2d(xb, wb, None, self.stride, self.padding, self.dilation, self.groups)
        return y if self.alpha is None else channel_scale(y, self.alpha)

    @torch.no_grad()
    def binary_weight(self) -> Tensor:
        """The eval-mode effective weight (±1, or ±scale for XNOR), without side effects."""
        return self.weight_quantizer.export(self.weight)

    def extra_repr(self) -> str:
        return super().extra_repr() + ("" if self.binary_input else ", binary_input=False")


def conv_bn(conv: nn.Module, bn: nn.Module, x: Tensor, residual: Tensor | None = None,
            nonlinearity: Callable[[Tensor], Tensor] | None = None) -> Tensor:
    """nonlinearity(bn(conv(x)) + residual), residual and nonlinearity optional: the shape of every
    binary block. In eval mode on CPU a BinaryConv2d's packed kernels apply the BatchNorm, the add
    and a PReLU or Hardtanh in their epilogue, with PyTorch's float32 roundings
    (bnnkit.nn._packed_eval), so the result is the same to the last bit; anywhere else, and for any
    other conv (the float twin's, a tracer's), it runs as written."""
    if isinstance(conv, BinaryConv2d) and isinstance(x, Tensor) and (residual is None or isinstance(residual, Tensor)):
        y = packed_forward(conv, x, bn=bn, residual=residual, nonlinearity=nonlinearity)
        if y is not None:
            return y
    y = bn(conv(x))
    y = y if residual is None else y + residual
    return y if nonlinearity is None else nonlinearity(y)


def conv_pool(conv: nn.Module, pool: nn.Module, x: Tensor, bn: nn.Module | None = None,
              nonlinearity: Callable[[Tensor], Tensor] | None = None) -> Tensor:
    """nonlinearity(bn(pool(conv(x)))), bn and nonlinearity optional. In packed eval on CPU, for an
    NCHW input and an nn.MaxPool2d, the binary conv writes channels-last and one native pass
    max-pools there, applies the BatchNorm and a PReLU or Hardtanh and writes NCHW
    (bnnkit.nn._packed_eval.pool_forward): PyTorch's NCHW max_pool2d runs at under 1 GB/s
    (64x128x32x32: 33 ms against 4.4 ms channels-last), and a maximum over the same windows in
    the same order is the same value, NaN and signed zeros included. Anywhere else it runs as
    written."""
    if (isinstance(conv, BinaryConv2d) and isinstance(x, Tensor) and x.dim() == 4 and x.is_contiguous()
            and not x.is_contiguous(memory_format=torch.channels_last) and _no_hooks(conv)):
        y = pool_forward(conv, pool, x, bn, nonlinearity)
        if y is not None:
            return y
    y = pool(conv(x))
    y = y if bn is None else bn(y)
    return y if nonlinearity is None else nonlinearity(y)


def binary_convs(model: nn.Module) -> list[tuple[str, BinaryConv2d]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, BinaryConv2d)]
