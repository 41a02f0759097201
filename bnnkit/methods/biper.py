"""BiPer: Binary Neural Networks using a Periodic Function (Vargas et al., CVPR 2024).

Weights pass through a square wave sign(sin(f*w)) whose sine is the surrogate; training runs in two
stages (stage 1: real sin(f*w) weights; stage 2: binary sign(sin(f*w))). A regulariser
tau * mean(sin^2(f*w)) per layer pulls weights towards the wave's plateaus. Reproduces
edmav4/BiPer as REFERENCE.md §1.2 specifies.
"""
from __future__ import annotations

import math
import os
import re
from typing import Any

import torch
from torch import Tensor, nn

from ..nn.functional import approx_sign, identity_sign, scaled_approx_sign
from ..nn.layers import BinaryConv2d, binary_convs
from ..nn.quantizers import QUANTIZERS, InputQuantizer, WeightQuantizer
from ..errors import ConfigError
from . import METHODS, Method, Option


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

    @torch.no_grad()
    def sign_bits(self, weight: Tensor) -> Tensor:
        """The bits stage 2 binarizes to, in either stage: sign(sin(f W)) > 0."""
        return torch.sin(self.freq * weight) > 0

    @torch.no_grad()
    def quantization_error(self, weight: Tensor) -> Tensor:
        """BiPer's QE of this layer (REFERENCE.md §5): mean |sin(f W) - sign(sin(f W))|."""
        s = torch.sin(self.freq * weight.float())
        return (s - torch.sign(s)).abs().mean()

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
    title = "BiPer"
    year = 2024
    architecture = "biper"
    defaults = {"freq": 20.0, "stage": 1, "tau": 1.0, "regularize": None}
    options = (
        Option("freq", float, 30.0, "BiPer frequency f (a later stage takes it from the checkpoint it starts from)",
               inherited=True, rebuilds=True, label="frequency", low=0.0, above=True),
        Option("stage", int, 1, "BiPer stage (1: sin weights, 2: sign(sin) weights)", choices=(1, 2), rebuilds=True,
               per_stage=True),
        Option("tau", float, None, "BiPer regulariser weight (sets tau_min = tau_max)", hparam=True, low=0.0),
        Option("tau_min", float, None, "BiPer tau schedule start", hparam=True, low=0.0),
        Option("tau_max", float, None, "BiPer tau schedule end", hparam=True, low=0.0),
        Option("regularize", bool, None, "add BiPer's regulariser (default: CIFAR only, as the authors)"),
    )
    aliases = {"load_ckpt_stage1": "start_from"}
    const_flags = {"stage2": {"stage": 2}}
    export_settings = {"stage": 2}
    bench_cases = {"biper1": {"stage": 1}, "biper2": {"stage": 2}}
    regularizer_in_validation = True  # the authors' validate() adds it too (Q9)

    @classmethod
    def script_defaults(cls, family: str) -> dict[str, Any]:
        if family == "cifar":
            return {"model": "resnet18_1w1a", "epochs": 600, "tau": 0.001}
        return {"model": "resnet18_1w1a", "epochs": 200, "batch_size": 512, "batch_size_test": 256,
                "tau_min": 0.85, "tau_max": 0.99}

    @classmethod
    def schedule_hparams(cls, cfg: dict[str, Any]) -> dict[str, Any]:
        """tau_min/tau_max; CIFAR's --tau sets both (a constant tau)."""
        if cfg["tau_min"] is not None and cfg["tau_max"] is not None and "tau" not in cfg["explicit"]:
            return {"tau_min": cfg["tau_min"], "tau_max": cfg["tau_max"]}
        if cfg["tau"] is not None:
            return {"tau_min": cfg["tau"], "tau_max": cfg["tau"]}
        return {}

    @classmethod
    def validate_config(cls, cfg: dict[str, Any]) -> None:
        super().validate_config(cfg)
        explicit = cfg["explicit"]
        if cfg["tau"] is not None and "tau" in explicit and ("tau_min" in explicit or "tau_max" in explicit):
            raise ConfigError("--tau sets tau_min = tau_max (CIFAR); give either --tau or --tau_min/--tau_max, not both")
        if cfg.get("start_from") and cfg["stage"] != 2:
            raise ConfigError("--load_ckpt_stage1 starts BiPer stage 2: add --stage 2 (or drop the flag)")
        if cfg["stage"] == 2 and cfg["epochs"] < 2:
            raise ConfigError("BiPer stage 2 runs epochs 1..E-1 (the authors' offset): give --epochs 2 or more")

    @classmethod
    def param_group_rule(cls, family: str, model_name: str):
        """REFERENCE.md §3.2: ImageNet decays names with 'fc' or 'conv'; CIFAR one group, all decayed."""
        return (lambda n: "fc" in n or "conv" in n) if family == "imagenet" else None

    @classmethod
    def augmentation(cls, dataset: str, backend: str) -> dict[str, Any]:
        # The authors' ImageNet torch loader adds Lighting (Q6); their DALI pipeline has none.
        return {"lighting": dataset == "imagenet" and backend != "dali"}

    @classmethod
    def authors_settings(cls, path: str, given: dict[str, Any]) -> dict[str, Any]:
        """f from --freq or the config.txt the authors write beside the checkpoint (`freq:  20.0`);
        stage 2 unless given (their eval.sh runs main_stage2.py)."""
        freq = given.get("freq")
        if freq is None:
            cfg = os.path.join(os.path.dirname(os.path.abspath(path)), "config.txt")
            if os.path.isfile(cfg):
                m = re.search(r"^freq:\s+(\d+(?:\.\d+)?)\s*$", open(cfg, errors="replace").read(), re.M)
                freq = float(m.group(1)) if m else None
        if freq is None:
            raise ConfigError(f"{path} is an authors' BiPer checkpoint without a config.txt beside it: "
                              f"pass --freq (the frequency it was trained with)")
        return {"freq": freq, "stage": 2 if given.get("stage") is None else given["stage"]}

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

    def starts_from_checkpoint(self) -> bool:
        return self.settings["stage"] == 2

    @torch.no_grad()
    def decision_points(self, layer: BinaryConv2d) -> tuple[Tensor, Tensor]:
        """sign(sin(f W)) flips at every multiple of pi/f: those within the layer's weight range."""
        w = layer.weight.detach().float().reshape(layer.weight.shape[0], -1)
        step = math.pi / layer.weight_quantizer.freq
        lo, hi = math.floor(float(w.min()) / step), math.ceil(float(w.max()) / step)
        return w, torch.arange(lo, hi + 1, device=w.device, dtype=w.dtype) * step

    def lr_start_epoch(self) -> int:
        return 0 if self.settings["stage"] == 2 else -1  # main_stage2.py counts epochs from 1 (Q14)

    def describe(self) -> str:
        return f"{self.name} stage {self.settings['stage']}"

    def on_stage_start(self, model: nn.Module, source_settings: dict[str, Any] | None = None, **hparams: Any) -> None:
        # The authors set beta = mean|W| before stage 2 (CIFAR); forward never reads it.
        with torch.no_grad():
            for _, conv in binary_convs(model):
                beta = getattr(conv.weight_quantizer, "beta", None)
                if beta is not None:
                    beta.copy_(conv.weight.abs().mean(dim=(1, 2, 3)).reshape(-1, 1, 1))
