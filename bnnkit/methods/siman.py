"""SiMaN: Sign-to-Magnitude Network Binarization (Lin et al., IEEE TPAMI 2022).

Weights: the larger-magnitude half of each standardised filter becomes +1, the rest -1; learned
per-channel scale alpha. Activations: per-sample standardisation, then sign with ApproxSign's
gradient. Reproduces lmbxmu/SiMaN as REFERENCE.md §1.1 specifies, quirks included (Q1-Q3).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ..nn.functional import (per_row_standardize, percentile, siman_center_and_clip_bounds, sign_magnitude_code,
                          standardized_approx_sign, takes_native_siman_weight)
from ..nn.layers import BinaryConv2d
from ..nn.quantizers import QUANTIZERS, InputQuantizer, WeightQuantizer
from . import METHODS, Method, Option


@QUANTIZERS.register()
class SimanWeight(WeightQuantizer):
    """SiMaN's weight binarizer.

    Forward, for latent W [O, C, K, K] and clip percent p:
      1. no grad, train and eval (quirk Q1): U = W - mean_r(W); l, h = percentile(|U|, p),
         percentile(|U|, 100 - p) over all entries; W <- sign(U) * clamp(|U|, l, h) in place.
      2. S = (W - mean_r W) / sqrt(var_r + 1e-5) (unbiased), X = |S| per row [O, k].
      3. training only: code[o, j] = 1 if X[o, j] > lower median of row o, else 0
         ('quick': 1 at the first floor(k/2) positions of a descending sort).
      4. W_b = 2 * code - 1 in {-1, +1}.
    Backward: straight through X: dL/dS = sign(S) * dL/dW_b, then through step 2's
    standardisation to W. Nothing flows through step 1 or through the code.
    Reference: Lin et al., "SiMaN: Sign-to-Magnitude Network Binarization", TPAMI 2022, Eq. 12-15.
    """

    name = "siman_weight"
    settings = ("percent", "sort")
    reference_state = {"code": "B"}
    reference_settings = {"percent": "percent"}

    def __init__(self, weight: Tensor, percent: float = 0.0, sort: str = "median") -> None:
        super().__init__()
        if sort not in ("median", "quick"):
            raise ValueError(f"siman sort must be 'median' or 'quick', not {sort!r}")
        self.percent = float(percent)
        self.sort = sort
        # The authors' B: a non-trainable parameter (so it counts in their parameter totals),
        # initialised from the weights *before* the model re-initialises them (quirk Q3).
        code = ((torch.sign(weight.detach()) + 1) / 2).reshape(weight.shape[0], -1)
        self.code = nn.Parameter(code, requires_grad=False)

    @torch.no_grad()
    def _center_and_clip(self, weight: Tensor) -> None:
        u = weight - weight.mean(dim=(1, 2, 3), keepdim=True)
        if self.percent > 0:
            mag = u.abs()
            low, high = percentile(mag, self.percent), percentile(mag, 100.0 - self.percent)
            u = torch.sign(u) * torch.minimum(torch.maximum(mag, low), high)
        weight.copy_(u)

    @torch.no_grad()
    def _update_code(self, magnitude: Tensor) -> None:
        if self.sort == "median":
            median = magnitude.median(dim=1, keepdim=True).values  # the lower median, as torch.median
            self.code.copy_((magnitude > median).to(self.code.dtype))
        else:
            order = magnitude.sort(dim=1, descending=True).indices[:, : magnitude.shape[1] // 2]
            self.code.zero_().scatter_(1, order, 1.0)

    def forward(self, weight: Tensor) -> Tensor:
        if self.sort == "median" and takes_native_siman_weight(weight, self.code):  # the same math, native
            bounds = siman_center_and_clip_bounds(weight, self.percent) if self.percent > 0 else None
            return sign_magnitude_code(weight, self.code, center=bounds is None, update=self.training, clip=bounds)
        self._center_and_clip(weight)
        if not self.training and not torch.is_grad_enabled():  # eval reads the stored code only (Q2)
            return (2 * self.code - 1).view_as(weight)
        magnitude = per_row_standardize(weight).abs().reshape(weight.shape[0], -1)
        if self.training:
            self._update_code(magnitude.detach())
        return (magnitude - magnitude.detach() + (2 * self.code - 1)).view_as(weight)

    @torch.no_grad()
    def export(self, weight: Tensor) -> Tensor:
        return (2 * self.code - 1).view_as(weight).clone()


@QUANTIZERS.register()
class SimanInput(InputQuantizer):
    """SiMaN's activation binarizer, train and eval alike.

    Forward: A' = (A - mean_n) / sqrt(var_n + 1e-5) per sample over (C, H, W) (unbiased);
    A_b = sign(A'). Backward: dL/dA' = max(0, 2 - 2|A'|) * dL/dA_b (ApproxSign), then through
    the standardisation to A. Reference: SiMaN (TPAMI 2022) code; ApproxSign from Bi-Real Net.
    """

    name = "siman_input"
    sign_valued = True
    centered = True

    def forward(self, x: Tensor) -> Tensor:
        if not torch.is_grad_enabled():  # the value needs only the mean: sign((x - mean) / std) = sign(x - mean)
            return torch.sign(x - x.mean(dim=(1, 2, 3), keepdim=True))
        return standardized_approx_sign(x)


@METHODS.register()
class Siman(Method):
    """SiMaN. Settings: percent (weight clipping percentile, scheduled 15*(1 - e/E)), sort."""

    name = "siman"
    title = "SiMaN"
    year = 2022
    architecture = "siman"
    defaults = {"percent": 0.0, "sort": "median"}
    bench_settings = {"percent": (0.0, 50.0, "the clipping percentile (its recipe schedules 15*(1 - e/E), "
                                             "so above 0 in every epoch; the default, 0, skips the clipping)")}
    options = (
        # The authors' flag: any value but 'quick' takes the median branch (their default is 'topk').
        Option("sort", str, "topk", "SiMaN code: 'quick' = sort branch, anything else = median branch",
               parse=lambda v: "quick" if v == "quick" else "median"),
    )

    @classmethod
    def param_group_rule(cls, family: str, model_name: str):
        """REFERENCE.md §3.2: CIFAR VGG decays names with a '0' or without 'conv'; the ResNets decay
        everything but the binary convs (names with 'layer' and 'conv')."""
        if family == "cifar" and "vgg" in model_name:
            return lambda n: "0" in n or "conv" not in n
        return lambda n: not ("layer" in n and "conv" in n)

    def make_scale(self, conv: BinaryConv2d) -> nn.Parameter:
        # mean |W| of the parent's default init, not of the re-initialised weights (quirk Q3).
        return nn.Parameter(conv.weight.detach().abs().mean(dim=(1, 2, 3)).reshape(-1, 1, 1).clone())

    def make_weight_quantizer(self, conv: BinaryConv2d) -> SimanWeight:
        return SimanWeight(conv.weight, self.settings["percent"], self.settings["sort"])

    def make_input_quantizer(self, conv: BinaryConv2d) -> SimanInput:
        return SimanInput()

    @torch.no_grad()
    def decision_points(self, layer: BinaryConv2d) -> tuple[Tensor, Tensor]:
        """The bit is +1 where |S| = |W - mean_r| / std_r exceeds its row's lower median m_r: in W's
        units, the two points mean_r -+ m_r std_r of each row (std_r with the binarizer's 1e-5)."""
        w = layer.weight.detach().float().reshape(layer.weight.shape[0], -1)
        mean = w.mean(dim=1, keepdim=True)
        std = torch.sqrt(w.var(dim=1, keepdim=True) + 1e-5)
        m = ((w - mean) / std).abs().median(dim=1, keepdim=True).values
        return w, torch.cat([mean - m * std, mean + m * std], dim=1)

    def schedule(self, epoch: int, epochs: int, **hparams: Any) -> dict[str, Any]:
        # float32 as the authors store it: torch.tensor(15 * (1 - e / E)) then .item()
        return {"percent": float(torch.tensor(15.0 * (1 - epoch / epochs), dtype=torch.float32))}
