"""STE: sign binarization of weights and activations with the clipped straight-through estimator.

A baseline (Courbariaux et al., "Binarized Neural Networks", NeurIPS 2016): no scale factors.
"""
from __future__ import annotations

from ..nn.layers import BinaryConv2d
from ..nn.quantizers import SteSignInput, SteSignWeight
from . import METHODS, Method


@METHODS.register()
class Ste(Method):
    name = "ste"
    title = "STE"
    year = 2016
    bench_cases = {}  # no published recipe to time
    architecture = "biper"  # Bi-Real-style models: Hardtanh activations, pooled shortcuts

    def make_weight_quantizer(self, conv: BinaryConv2d) -> SteSignWeight:
        return SteSignWeight()

    def make_input_quantizer(self, conv: BinaryConv2d) -> SteSignInput:
        return SteSignInput()
