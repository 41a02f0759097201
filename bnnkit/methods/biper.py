"""BiPer: Binary Neural Networks using a Periodic Function (Vargas et al., CVPR 2024).

Weights pass through a square wave sign(sin(f*w)) whose sine is the surrogate; training runs in two
stages (stage 1: real sin(f*w) weights; stage 2: binary sign(sin(f*w))). A regulariser
tau * mean(sin^2(f*w)) per layer pulls weights towards the wave's plateaus. Reproduces
edmav4/BiPer as REFERENCE.md §1.2 specifies.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from ..nn.functional import approx_sign, identity_sign, scaled_approx_sign
from ..nn.layers import BinaryConv2d, binary_convs
from ..nn.quantizers import QUANTIZERS, InputQuantizer, WeightQuantizer
from . import METHODS, Method


@QUANTIZERS.register()
class BiperWeight(WeightQuantizer):
    """BiPer's weight binarizer.

    Forward: stage 1, W_b = sin(f*W) (real valued); stage 2, W_b = sign(sin(f*W)) in {-1, +1}.
    Backward, both stages: dL/dW = f * cos(f*W) * dL/dW_b (stage 2: identity straight-through
    over the sign). `tau` weights this layer's term tau * mean(sin^2(f*W)) in the regulariser.
    Reference: Vargas et al., "BiPer: Binary Neural Networks using a Periodic Function",
    CVPR 2024, Eq. 5-8.
    """

    name = "biper_weight"
    settings = ("freq", "stage", "tau")
    pure = True
    reference_state = {"beta": "beta"}
    reference_settings = {"tau": "tau"}

    def __init__(self, out_channels: int, freq: float = 20.0, stage: int = 1, tau: float = 1.0,
                 with_beta: bool = False, follows_schedule: bool = True) -> None:
        super().__init__()
        self.freq, self.stage, self.tau = float(freq), int(stage), float(tau)
        # The 1w32a convs never get the scheduled tau in the authors' trainer (quirk Q12).
        self.follows_schedule = follows_schedule
        if with_beta:  # The authors' CIFAR convs carry beta; nothing reads it (quirk Q11).
            self.beta = nn.Parameter(torch.ones(out_channels, 1, 1), requires_grad=False)

    def configure(self, **values: Any) -> None:
        if "stage" in values and values["stage"] not in (1, 2):
            raise ValueError(f"biper stage must be 1 or 2, not {values['stage']!r}")
        if not self.follows_schedule:
            values.pop("tau", None)
        super().configure(**values)

    def forward(self, weight: Tensor) -> Tensor:
        wave = torch.sin(self.freq * weight)
        return identity_sign(wave) if self.stage == 2 else wave

    @torch.no_grad()
    def export(self, weight: Tensor) -> Tensor:
        if self.stage != 2:
            raise ValueError("a BiPer stage-1 layer has real sin(f*w) weights; export a stage-2 model")
        return torch.sign(torch.sin(self.freq * weight))

    def penalty(self, weight: Tensor) -> Tensor:
        """tau * mean(0.5 - 0.5 cos(2 f W)) = tau * mean(sin^2(f W)), as the authors write it."""
        return SquaredSinePenalty.apply(weight, self.freq, self.tau)


class SquaredSinePenalty(torch.autograd.Function):
    """tau * mean(0.5 - 0.5 cos(2 f W)): the authors' operations in their order, so the same value
    bits, with one temporary instead of four. Backward, written out:
        dL/dW = g * tau * f * sin(2 f W) / n     (n = W.numel())
    three passes over W where autograd's chain through mean, rsub, mul, cos and mul takes seven
    (about 90 ms of a CIFAR ResNet-18 step's 11 M weights)."""

    @staticmethod
    def forward(weight: Tensor, freq: float, tau: float) -> Tensor:
        wave = torch.cos(2 * freq * weight)
        return tau * torch.mean(wave.mul_(-0.5).add_(0.5))  # -(0.5 c) + 0.5 is 0.5 - 0.5 c exactly

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        weight, ctx.freq, ctx.tau = inputs
        ctx.save_for_backward(weight)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None]:
        (weight,) = ctx.saved_tensors
        scale = grad * (ctx.tau * ctx.freq / weight.numel())
        return torch.sin(2 * ctx.freq * weight).mul_(scale), None, None


@QUANTIZERS.register()
class BiperInput(InputQuantizer):
    """BiPer's activation binarizer.

    Forward: A' = A / sqrt(var_n(A) + 1e-5) per sample over (C, H, W) (unbiased, no mean
    subtraction) in training, A' = A in eval; A_b = sign(A') (the same values either way).
    Backward: dL/dA' = max(0, 2 - 2|A'|) * dL/dA_b (ApproxSign), then through the scaling to A.
    Reference: BiPer (CVPR 2024) code, inherited from ReCU (Xu et al., ICCV 2021).
    """

    name = "biper_input"
    sign_valued = True

    def forward(self, x: Tensor) -> Tensor:
        if self.training and torch.is_grad_enabled():
            return scaled_approx_sign(x)
        return approx_sign(x)


@METHODS.register()
class Biper(Method):
    """BiPer. Settings: freq (f), stage (1 or 2), tau (regulariser weight)."""

    name = "biper"
    architecture = "biper"
    defaults = {"freq": 20.0, "stage": 1, "tau": 1.0, "regularize": None}

    def __init__(self, family: str = "cifar", **settings: Any) -> None:
        if "stage2" in settings:  # the authors' flag name
            settings["stage"] = 2 if settings.pop("stage2") else 1
        super().__init__(family, **settings)
        if self.settings["stage"] not in (1, 2):
            raise ValueError(f"biper stage must be 1 or 2, not {self.settings['stage']!r}")

    def make_scale(self, conv: BinaryConv2d) -> nn.Parameter:
        return nn.Parameter(torch.rand(conv.out_channels, 1, 1))  # U[0,1), drawn right after the weight

    def make_weight_quantizer(self, conv: BinaryConv2d) -> BiperWeight:
        s = self.settings
        return BiperWeight(conv.out_channels, s["freq"], s["stage"], s["tau"] if conv.binary_input else 1.0,
                           with_beta=self.family == "cifar" and conv.binary_input,
                           follows_schedule=conv.binary_input)

    def make_input_quantizer(self, conv: BinaryConv2d) -> BiperInput:
        return BiperInput()

    def regularizes(self) -> bool:
        """The authors add the regulariser in their CIFAR trainer only (quirk Q10)."""
        flag = self.settings["regularize"]
        return self.family == "cifar" if flag is None else bool(flag)

    def regularizer(self, model: nn.Module) -> Tensor:
        terms = [c.weight_quantizer.penalty(c.weight) for _, c in binary_convs(model)]
        if not terms or not self.regularizes():
            return super().regularizer(model)
        return torch.stack(terms).sum()

    def schedule(self, epoch: int, epochs: int, *, tau_min: float | None = None,
                 tau_max: float | None = None, **hparams: Any) -> dict[str, Any]:
        """tau(e) = A exp(e/E) + B with A = (tau_max - tau_min)/(e - 1), B = tau_min - A, in float32."""
        if tau_min is None or tau_max is None:
            return {}
        f32 = lambda v: torch.tensor(v, dtype=torch.float32)  # noqa: E731
        lo, hi = f32(tau_min), f32(tau_max)
        a = (hi - lo) / (f32(math.e) - 1)
        b = lo - a
        return {"tau": float(a * torch.exp(f32(epoch) / f32(epochs)) + b)}

    def on_stage_start(self, model: nn.Module) -> None:
        # The authors set beta = mean|W| before stage 2 (CIFAR); forward never reads it.
        with torch.no_grad():
            for _, conv in binary_convs(model):
                beta = getattr(conv.weight_quantizer, "beta", None)
                if beta is not None:
                    beta.copy_(conv.weight.abs().mean(dim=(1, 2, 3)).reshape(-1, 1, 1))
