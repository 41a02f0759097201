"""IR-Net: Forward and Backward Information Retention for Accurate Binary Neural Networks
(Qin et al., CVPR 2020).

Weights: Libra-PB, each filter centred and divided by its std (maximising the binary weights'
entropy), then sign times a power-of-two scale per output channel. Activations: plain sign.
Backward: the Error Decay Estimator (EDE) k t (1 - tanh^2(t x)) for both, with t rising from
T_min to T_max over training (k = 1/t while t < 1). No learned scale. Reproduces htqin/IR-Net
(one folder per model, IRConv2d and BinaryQuantize identical in all) as METHODS.md §2 specifies.
"""
from __future__ import annotations

import math
import re
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..nn.layers import BinaryConv2d, binary_convs
from ..nn.quantizers import QUANTIZERS, InputQuantizer, WeightQuantizer
from . import METHODS, Method, Option


class EdeSign(torch.autograd.Function):
    """Forward sign(x); backward k t (1 - tanh^2(t x)) g, computed as the authors' BinaryQuantize
    does: ((k t) * (1 - tanh(x t)^2)) * g, with k t rounded once in float32 (k and t are float32
    values, as their [1]-shaped tensors hold them)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x: Tensor, k: float, t: float) -> Tensor:
        return torch.sign(x)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        x, k, t = inputs
        ctx.save_for_backward(x)
        ctx.kt = float(np.float32(k) * np.float32(t))
        ctx.t = float(np.float32(t))

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None]:
        (x,) = ctx.saved_tensors
        return ctx.kt * (1 - torch.pow(torch.tanh(x * ctx.t), 2)) * grad, None, None


def ede_sign(x: Tensor, k: float, t: float) -> Tensor:
    return EdeSign.apply(x, k, t)


class _Scheduled:
    """k and t as settings; `follows_schedule` False keeps a layer's values when configure()
    applies scheduled ones (the authors' trainers set k and t on named convs only)."""

    settings = ("k", "t")

    def configure(self, **values: Any) -> None:
        if not self.follows_schedule:
            values = {key: v for key, v in values.items() if key not in ("k", "t")}
        super().configure(**values)


@QUANTIZERS.register()
class IrnetWeight(_Scheduled, WeightQuantizer):
    """IR-Net's weight binarizer (Libra-PB), train and eval alike.

    Forward, for latent W [O, C, K, K]:
      1. W_s = (W - mean_r W) / std_r(W - mean_r W) (unbiased std, no eps);
      2. s_o = 2^round(log2(mean_r |W_s|)) per output channel, detached (1 for ordinary weights,
         whose standardised mean |W_s| is about 0.8);
      3. W_b = sign(W_s) * s (sign(0) = 0).
    Backward (EDE): dL/dW_s = s * k t (1 - tanh^2(t W_s)) * dL/dW_b, then through the
    standardisation (row mean and std) to W.
    Reference: Qin et al., "Forward and Backward Information Retention for Accurate Binary Neural
    Networks", CVPR 2020, Eq. 7-11; htqin/IR-Net modules/ir_1w1a.py (IRConv2d) and
    binaryfunction.py (BinaryQuantize).
    """

    name = "irnet_weight"
    pure = True

    def __init__(self, k: float = 10.0, t: float = 0.1, follows_schedule: bool = True) -> None:
        super().__init__()
        self.k, self.t = float(k), float(t)
        self.follows_schedule = follows_schedule

    @staticmethod
    def _standardized(weight: Tensor) -> Tensor:
        w = weight - weight.mean(dim=(1, 2, 3), keepdim=True)
        return w / w.std(dim=(1, 2, 3), keepdim=True)

    @staticmethod
    @torch.no_grad()
    def _scale(ws: Tensor) -> Tensor:
        exponent = (torch.log(ws.abs().mean(dim=(1, 2, 3), keepdim=True)) / math.log(2)).round()
        return torch.full_like(exponent, 2.0).pow(exponent)

    def forward(self, weight: Tensor) -> Tensor:
        ws = self._standardized(weight)
        return ede_sign(ws, self.k, self.t) * self._scale(ws)

    @torch.no_grad()
    def export(self, weight: Tensor) -> Tensor:
        ws = self._standardized(weight)
        return torch.sign(ws) * self._scale(ws)


@QUANTIZERS.register()
class IrnetInput(_Scheduled, InputQuantizer):
    """IR-Net's activation binarizer: A_b = sign(A), no normalisation of any kind.
    Backward (EDE): dL/dA = k t (1 - tanh^2(t A)) * dL/dA_b, with the conv's k and t.
    Reference: IR-Net (CVPR 2020) Eq. 11; htqin/IR-Net modules/ir_1w1a.py."""

    name = "irnet_input"
    sign_valued = True

    def __init__(self, k: float = 10.0, t: float = 0.1, follows_schedule: bool = True) -> None:
        super().__init__()
        self.k, self.t = float(k), float(t)
        self.follows_schedule = follows_schedule

    def forward(self, x: Tensor) -> Tensor:
        return ede_sign(x, self.k, self.t)


# The convs the authors' trainers set k and t on: CIFAR-10/ResNet20/*/trainer.py on
# layer{1,2,3}[i].conv1/.conv2, CIFAR-10/VGG-Small/main.py on conv0..conv5 (conv0 is real).
_SCHEDULED = re.compile(r"layer[123]\.\d+\.conv[12]|conv[0-5]")


@METHODS.register()
class Irnet(Method):
    """IR-Net. Settings: k, t (EDE; the initial k = 10, t = 0.1 are the authors' attribute values).

    The authors' trainers have no method flags (the generic ones only: CIFAR-10/ResNet20 trainer.py
    --epochs 400, -b 128, --lr 0.1, --momentum 0.9, --wd 1e-4, and -b serves validation too;
    VGG-Small main.py --epochs 300, -b 128, --lr 0.007, --wd 1e-4); EDE's bounds are constants in
    them, bnnkit's schedule hyper-parameters here:
      T_min  float  1e-3  t at epoch 0 (ResNet20/1w1a; 1e-1 in ResNet20/1w32a and VGG-Small)
      T_max  float  10    t approached at the last epoch
    The ImageNet folders ship models and config.yaml only (SGD, nesterov, step lr by iteration
    with warm-up, batch 64 per GPU on 32 GPUs): no trainer to reproduce.
    Layers outside the convs the trainers name (ImageNet layer4, CIFAR ResNet-18's layer4) keep
    their k and t when the schedule is applied (`prepare`).
    """

    name = "irnet"
    title = "IR-Net"
    year = 2020
    architecture = "irnet"
    defaults = {"k": 10.0, "t": 0.1}
    options = (
        Option("T_min", float, 1e-3, "IR-Net EDE t at epoch 0 (a constant of the authors' trainers)", hparam=True,
               low=0.0, above=True),
        Option("T_max", float, 10.0, "IR-Net EDE t approached at the last epoch", hparam=True, low=0.0, above=True),
    )

    @classmethod
    def script_defaults(cls, family: str, model: str | None = None) -> dict[str, Any]:
        """CIFAR-10/ResNet20/1w1a/trainer.py (VGG-Small/main.py with model='vgg_small_1w1a');
        ImageNet: the values of ImageNet/ResNet18/1w1a/config.yaml that map to flags."""
        if family == "cifar":
            if model == "vgg_small_1w1a":
                return {"model": model, "epochs": 300, "batch_size": 128, "batch_size_test": 128, "lr": 0.007,
                        "weight_decay": 1e-4, "T_min": 1e-1, "T_max": 10.0}
            t_min = 1e-1 if model == "resnet20_1w32a" else 1e-3
            return {"model": model or "resnet20_1w1a", "epochs": 400, "batch_size": 128, "batch_size_test": 128,
                    "lr": 0.1, "weight_decay": 1e-4, "T_min": t_min, "T_max": 10.0}
        return {"model": model or "resnet18_1w1a", "batch_size": 64, "lr": 0.2, "weight_decay": 1e-4,
                "T_min": 1e-3, "T_max": 10.0}

    def make_weight_quantizer(self, conv: BinaryConv2d) -> IrnetWeight:
        return IrnetWeight(self.settings["k"], self.settings["t"])

    def make_input_quantizer(self, conv: BinaryConv2d) -> IrnetInput:
        return IrnetInput(self.settings["k"], self.settings["t"])

    def prepare(self, model: nn.Module) -> None:
        for name, conv in binary_convs(model):
            follows = _SCHEDULED.fullmatch(name) is not None
            for q in (conv.weight_quantizer, conv.input_quantizer):
                if isinstance(q, _Scheduled):
                    q.follows_schedule = follows

    @torch.no_grad()
    def decision_points(self, layer: BinaryConv2d) -> tuple[Tensor, Tensor]:
        """sign(standardised W) is sign(W - mean_r): each row flips at its own mean."""
        w = layer.weight.detach().float().reshape(layer.weight.shape[0], -1)
        return w, w.mean(dim=1, keepdim=True)

    def schedule(self, epoch: int, epochs: int, *, T_min: float = 1e-3, T_max: float = 10.0,
                 **hparams: Any) -> dict[str, Any]:
        """t = 10^(log10 T_min + (log10 T_max - log10 T_min) e / E) in float64, stored as float32;
        k = 1/t (float32) while t < 1, else 1: the authors' Log_UP."""
        lo, hi = math.log(T_min) / math.log(10), math.log(T_max) / math.log(10)
        t = torch.tensor([math.pow(10, lo + (hi - lo) / epochs * epoch)], dtype=torch.float32)
        k = 1 / t if t < 1 else torch.tensor([1.0])
        return {"k": float(k), "t": float(t)}
