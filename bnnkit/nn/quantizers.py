"""Quantizers: the small named units that turn latent weights or real activations into binary ones.

As in larq, weights and inputs get separate quantizers, each a module whose docstring gives its
forward and backward math and its reference. A method (bnnkit.methods) picks one of each for its
binary convolutions. Quantizers are registered by name so that tests can run over all of them.
"""
from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from .._registry import Registry
from .functional import approx_sign, clipped_sign

QUANTIZERS: Registry[type["Quantizer"]] = Registry("quantizer")


class Quantizer(nn.Module):
    """Base of weight and input quantizers.

    `settings` names the plain attributes a training schedule may change (SiMaN's percent, BiPer's
    tau); `configure` sets them. The authors kept some of our state and settings on the conv
    itself under other names: `reference_state` maps our local state names to theirs and
    `reference_settings` maps their state names to our setting attributes (bnnkit.compat);
    `reference_reshaped` names the conv's own keys (relative to the conv, e.g. 'weight') that the
    authors stored in another shape of the same size; `reference_conv_state` maps the conv's own
    state names to the authors' where they differ (ReActNet-A's step-2 `weight` is their `weights`).
    """

    name: ClassVar[str]
    kind: ClassVar[str]  # "weight" or "input"
    settings: ClassVar[tuple[str, ...]] = ()
    reference_state: ClassVar[dict[str, str]] = {}
    reference_settings: ClassVar[dict[str, str]] = {}
    reference_reshaped: ClassVar[tuple[str, ...]] = ()
    reference_conv_state: ClassVar[dict[str, str]] = {}

    def configure(self, **values: Any) -> None:
        for key, value in values.items():
            if key not in self.settings:
                raise TypeError(f"{self.name} has no setting {key!r}; its settings: {', '.join(self.settings) or 'none'}")
            setattr(self, key, value)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={getattr(self, k)!r}" for k in self.settings)


class WeightQuantizer(Quantizer):
    kind = "weight"
    # True: forward's value is a function of the weight's bits and the `settings` alone, with no
    # side effects, so packed eval may reuse its last result for a weight whose bits did not
    # change (SiMaN's is not: it centres the latent weights in place on every call)
    pure: ClassVar[bool] = False

    def export(self, weight: Tensor) -> Tensor:
        """The eval-mode binary weight, computed without side effects (for deployment)."""
        raise NotImplementedError

    @torch.no_grad()
    def sign_bits(self, weight: Tensor) -> Tensor:
        """The binary weight's signs as booleans (True = +1), for flip ratios: those of `export`
        unless the method's weights are real in some stage and binarize elsewhere."""
        return self.export(weight) > 0

    def quantization_error(self, weight: Tensor) -> Tensor | None:
        """The method's own quantisation error of this layer's weights, or None where the method
        defines none (the trainer logs it per epoch where every binary layer has one)."""
        return None

    def sign_and_scale(self, weight: Tensor) -> tuple[Tensor, Tensor] | None:
        """For a quantizer whose layer evaluates conv(x_b, S) * a (an exact integer, then one
        float32 rounding per output channel), the signs S in {-1, 0, +1} and the scale a [O]
        without autograd, so that packed eval runs that conv on bits with the same result
        (ReActNet's step 2); None (the default) where the eval conv takes the quantizer's output."""
        return None


class InputQuantizer(Quantizer):
    kind = "input"
    centered: ClassVar[bool] = False  # True: binarizes x - mean over (C,H,W) of each sample
    # True: forward(x) is exactly sign(x - t) in {-1, 0, +1}, t = 0 or (centered) that mean, with
    # or without autograd, so exact 1-bit kernels may replace the float conv (bnnkit.nn._packed_eval,
    # bnnkit.nn._packed_train)
    sign_valued: ClassVar[bool] = False


@QUANTIZERS.register()
class ApproxSignInput(InputQuantizer):
    """x_b = sign(x).  Backward: max(0, 2 - 2|x|) * g.
    Bi-Real Net's ApproxSign (Liu et al., ECCV 2018), without any rescaling of x."""

    name = "approx_sign"
    sign_valued = True

    def forward(self, x: Tensor) -> Tensor:
        return approx_sign(x)


@QUANTIZERS.register()
class SteSignInput(InputQuantizer):
    """x_b = sign(x).  Backward: g * 1{|x| <= 1}.
    Straight-through estimator of BinaryNet (Courbariaux et al., 2016)."""

    name = "ste_sign"
    sign_valued = True

    def forward(self, x: Tensor) -> Tensor:
        return clipped_sign(x)


@QUANTIZERS.register()
class SteSignWeight(WeightQuantizer):
    """w_b = sign(w).  Backward: g * 1{|w| <= 1}.
    BinaryConnect's deterministic binarization (Courbariaux et al., NeurIPS 2015 / 2016)."""

    name = "ste_sign_weight"
    pure = True

    def forward(self, weight: Tensor) -> Tensor:
        return clipped_sign(weight)

    @torch.no_grad()
    def export(self, weight: Tensor) -> Tensor:
        return torch.sign(weight)
