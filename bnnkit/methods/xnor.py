"""XNOR-Net weights: sign(w) times the mean |w| of each output channel (Rastegari et al., ECCV 2016)."""
from __future__ import annotations

import torch
from torch import Tensor

from ..nn.functional import clipped_sign
from ..nn.layers import BinaryConv2d
from ..nn.quantizers import QUANTIZERS, SteSignInput, WeightQuantizer
from . import METHODS, Method


@QUANTIZERS.register()
class XnorWeight(WeightQuantizer):
    """W_b = a_o * sign(W) with a_o = mean |W[o]| over (C, K, K).

    Backward (the scale is differentiated too, as in XNOR-Net's derivation):
    dL/dW = a_o * 1{|W| <= 1} * dL/dW_b + sign(W) / n * sum_o-row(sign(W) * dL/dW_b),
    n = C*K*K. Reference: Rastegari et al., "XNOR-Net", ECCV 2016, Sec. 3.1.
    """

    name = "xnor_weight"

    def forward(self, weight: Tensor) -> Tensor:
        scale = weight.abs().mean(dim=(1, 2, 3), keepdim=True)
        return scale * clipped_sign(weight)

    @torch.no_grad()
    def export(self, weight: Tensor) -> Tensor:
        return weight.abs().mean(dim=(1, 2, 3), keepdim=True) * torch.sign(weight)


@METHODS.register()
class Xnor(Method):
    """XNOR-Net's scaled binary weights with sign activations (the activation scale K of the
    paper is left out, as in most later BNNs, since batch norm follows every conv)."""

    name = "xnor"
    title = "XNOR-Net"
    year = 2016
    bench_cases = {}  # no published recipe to time
    architecture = "biper"

    def make_weight_quantizer(self, conv: BinaryConv2d) -> XnorWeight:
        return XnorWeight()

    def make_input_quantizer(self, conv: BinaryConv2d) -> SteSignInput:
        return SteSignInput()
