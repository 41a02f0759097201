"""ReCU: Reviving the Dead Weights in Binary Neural Networks (Xu et al., ICCV 2021).

Weights: each filter is standardised (times 2*sqrt(2)) and clamped at the tau-quantile Q of a
Laplace fit, -mean|W| * ln(2 - 2 tau), so that the "dead" weights near zero are revived and the
outliers stop growing; then sign with an identity straight-through gradient; a learned per-channel
scale alpha, drawn U[0, 1). Activations: scaled by the per-sample std in training, then sign with
ApproxSign's gradient (the activation path BiPer inherited). tau rises from tau_min to tau_max
along an exponential over training. Reproduces z-hXu/ReCU (cifar/ and imagenet/, whose
BinarizeConv2d are identical) as METHODS.md §1 specifies; its models are BiPer's, which forked
this code (bnnkit's 'biper' architecture).
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from ..nn.functional import EPS, approx_sign, identity_sign, scaled_approx_sign
from ..nn.layers import BinaryConv2d
from ..nn.quantizers import QUANTIZERS, InputQuantizer, WeightQuantizer
from . import METHODS, Method, Option


@QUANTIZERS.register()
class RecuWeight(WeightQuantizer):
    """ReCU's weight binarizer, train and eval alike.

    Forward, for latent W [O, C, K, K] and the layer's tau:
      1. W0 = W - mean_r(W); W1 = W0 / (sqrt(var_r(W0) + 1e-5) / 2 / sqrt(2)) (unbiased var),
         i.e. each row standardised, times 2 sqrt(2).
      2. Q = -mean(|W1|) * ln(2 - 2 tau), one scalar over the whole layer, computed in W's dtype
         and detached (the authors take it to a Python float: no gradient flows through Q).
      3. W2 = clamp(W1, -Q, Q); W_b = sign(W2) (sign(0) = 0).
    Backward: identity straight-through over the sign, then the clamp's mask and the
    standardisation: dL/dW = d(W1)/dW^T [1{-Q <= W1 <= Q} * dL/dW_b], through the row mean and var.
    tau = 1 gives Q = +inf (no clamp), the authors' initial buffer value.
    Reference: Xu et al., "ReCU: Reviving the Dead Weights in Binary Neural Networks", ICCV 2021,
    Eq. 9-11; z-hXu/ReCU modules/binarized_modules.py (BinarizeConv2d, BinaryQuantize).
    """

    name = "recu_weight"
    settings = ("tau",)
    pure = True
    reference_settings = {"tau": "tau"}  # the authors' per-conv buffer

    def __init__(self, tau: float = 1.0) -> None:
        super().__init__()
        self.tau = float(tau)

    def _clamped(self, weight: Tensor) -> Tensor:
        w0 = weight - weight.mean(dim=(1, 2, 3), keepdim=True)
        w1 = w0 / (torch.sqrt(w0.var(dim=(1, 2, 3), keepdim=True) + EPS) / 2 / math.sqrt(2))
        with torch.no_grad():  # the authors' Q is .detach().cpu().item(): the same value, no host round trip
            tau = torch.tensor(self.tau, dtype=w1.dtype, device=w1.device)
            q = -w1.abs().mean() * torch.log(2 - 2 * tau)
        return torch.clamp(w1, -q, q)

    def forward(self, weight: Tensor) -> Tensor:
        return identity_sign(self._clamped(weight))

    @torch.no_grad()
    def export(self, weight: Tensor) -> Tensor:
        return torch.sign(self._clamped(weight))


@QUANTIZERS.register()
class RecuInput(InputQuantizer):
    """ReCU's activation binarizer (BiPer's biper_input is the same: BiPer forked this code).

    Forward: A' = A / sqrt(var_n(A) + 1e-5) per sample over (C, H, W) (unbiased, no mean
    subtraction) in training, A' = A in eval; A_b = sign(A'), the same values either way.
    Backward: dL/dA' = max(0, 2 - 2|A'|) * dL/dA_b (ApproxSign), then through the scaling to A.
    Reference: z-hXu/ReCU modules/binarized_modules.py (BinaryQuantize_a); ApproxSign from
    Bi-Real Net (Liu et al., ECCV 2018).
    """

    name = "recu_input"
    sign_valued = True

    def forward(self, x: Tensor) -> Tensor:
        if self.training and torch.is_grad_enabled():
            return scaled_approx_sign(x)
        return approx_sign(x)


@METHODS.register()
class Recu(Method):
    """ReCU. Setting: tau (the clamp's quantile; the authors' per-conv buffer, scheduled per epoch).

    The authors' training flags (utils/options.py; cifar | imagenet defaults):
      --tau_min  float  0.85  "tau_min": tau at epoch 0
      --tau_max  float  0.99  "tau_max": the value tau(e) approaches at e = E
    and the generic ones: --epochs 600 | 200, -b 256 | 512, -bt 128 | 256, --weight_decay
    5e-4 | 1e-4, --lr 0.1, --model resnet18_1w1a, --lr_type cos, --warm_up (off by default; every
    published row sets it). The published rows (README): CIFAR-10 600 epochs, lr 0.1, -b 256,
    -bt 128, cos, warm-up, wd 5e-4; ImageNet 200 epochs, lr 0.1, -b 512, -bt 256, cos, warm-up,
    wd 1e-4; tau 0.85 -> 0.99 everywhere. The README's "finetune" rows come from
    imagenet_two-stage/ (a ReActNet-style Bi-Real ResNet-18 with LearnableBias and PReLU, trained
    with Adam and a ResNet-34 teacher's distribution loss): not reproduced here.
    """

    name = "recu"
    title = "ReCU"
    year = 2021
    architecture = "biper"  # BiPer's models are ReCU's (edmav4/BiPer forked z-hXu/ReCU)
    defaults = {"tau": 1.0}
    options = (
        Option("tau_min", float, 0.85, "ReCU tau at epoch 0 (tau_min)", hparam=True, low=0.0, above=True, high=1.0),
        Option("tau_max", float, 0.99, "ReCU tau approached at the last epoch (tau_max)", hparam=True, low=0.0, above=True,
               high=1.0),
    )

    @classmethod
    def script_defaults(cls, family: str) -> dict[str, Any]:
        """cifar/utils/options.py and imagenet/utils/options.py."""
        common = {"model": "resnet18_1w1a", "lr": 0.1, "tau_min": 0.85, "tau_max": 0.99}
        if family == "cifar":
            return {**common, "epochs": 600, "batch_size": 256, "batch_size_test": 128, "weight_decay": 5e-4}
        return {**common, "epochs": 200, "batch_size": 512, "batch_size_test": 256, "weight_decay": 1e-4}

    @classmethod
    def param_group_rule(cls, family: str, model_name: str):
        """cifar/main.py: one group, every parameter decayed. imagenet/main.py: the parameters whose
        names contain 'fc' or 'conv' (stem, binary weights and their alpha, fc) decayed, the rest
        (BatchNorms, BatchNorm1d, downsample convs) with weight decay 0, in that order."""
        return (lambda n: "fc" in n or "conv" in n) if family == "imagenet" else None

    def make_scale(self, conv: BinaryConv2d) -> nn.Parameter:
        return nn.Parameter(torch.rand(conv.out_channels, 1, 1))  # U[0,1), drawn right after the weight

    def make_weight_quantizer(self, conv: BinaryConv2d) -> RecuWeight:
        return RecuWeight(self.settings["tau"])

    def make_input_quantizer(self, conv: BinaryConv2d) -> RecuInput:
        return RecuInput()

    @torch.no_grad()
    def decision_points(self, layer: BinaryConv2d) -> tuple[Tensor, Tensor]:
        """sign(clamp(standardised W)) is sign(W - mean_r): each row flips at its own mean."""
        w = layer.weight.detach().float().reshape(layer.weight.shape[0], -1)
        return w, w.mean(dim=1, keepdim=True)

    def schedule(self, epoch: int, epochs: int, *, tau_min: float = 0.85, tau_max: float = 0.99,
                 **hparams: Any) -> dict[str, Any]:
        """tau(e) = A e^(e/E) + B with A = (tau_max - tau_min) / (e - 1), B = tau_min - A, in float32
        as the authors' cpt_tau computes it (e^(e/E) as torch.pow of float32 e: not BiPer's exp)."""
        e = torch.tensor(math.e, dtype=torch.float32)
        lo = torch.tensor(tau_min, dtype=torch.float32)
        hi = torch.tensor(tau_max, dtype=torch.float32)
        a = (hi - lo) / (e - 1)
        b = lo - a
        return {"tau": float(a * torch.pow(e, epoch / epochs) + b)}
