"""RBNN: Rotated Binary Neural Network (Lin et al., NeurIPS 2020).

Weights: each standardised filter, viewed as an a x b matrix X, is rotated by two learned
orthogonal matrices, R1^T X R2, which RBNN fits to the signs once per epoch (three alternating
SVD rounds in the first training batch); a learned per-channel angle blends the rotated and the
plain filter, W2 + |sin(rotate)| (R1^T X R2 - W2), before the sign. Both signs have a triangular
surrogate whose width shrinks with t (k, t scheduled per epoch); a per-channel scale alpha starts
at mean |W|. Reproduces lmbxmu/RBNN (cifar/ and imagenet/, identical BinarizeConv2d) as
METHODS.md §3 specifies.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..nn.functional import standardized_triangle_sign, takes_native_activation
from ..nn.layers import BinaryConv2d
from ..nn.quantizers import QUANTIZERS, InputQuantizer, WeightQuantizer
from . import METHODS, Method, Option


def factor_pair(n: int) -> tuple[int, int]:
    """(a, b) with a * b = n and a the largest divisor of n not above floor(sqrt(n)): 144 -> (12, 12),
    27 -> (3, 9), the authors' get_ab."""
    for a in range(math.isqrt(n), 0, -1):
        if n % a == 0:
            return a, n // a
    raise ValueError(f"no factor pair of {n}")


def random_rotation(n: int) -> Tensor:
    """A Haar-random n x n orthogonal matrix (QR of a Gaussian, signs fixed by R's diagonal), drawn
    from numpy's global generator as the authors' scipy.stats.ortho_group is, so that torch's
    generator, and with it every other initial weight of a seeded run, draws what theirs does."""
    q, r = np.linalg.qr(np.random.standard_normal((n, n)))
    return torch.from_numpy(q * np.sign(np.diag(r))).float()


def _triangle(t: float) -> tuple[float, float]:
    """(t^2, 2 sqrt(t^2 / 2)) rounded in float32, as the authors compute them from a float32 t."""
    t2 = np.float32(t) * np.float32(t)
    return float(t2), float(np.float32(2) * np.sqrt(t2 / np.float32(2)))


class TriangleSign(torch.autograd.Function):
    """Forward sign(v); backward max(0, k (2 sqrt(t^2/2) - |t^2 x|)) * g on x (x = v unless given):
    a triangle of half-width sqrt(2)/t and height k sqrt(2) t, the authors' BinaryQuantize."""

    @staticmethod
    def forward(x: Tensor, v: Tensor, k: float, t: float) -> Tensor:
        return torch.sign(v)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        x, _, k, t = inputs
        ctx.save_for_backward(x)
        ctx.k = float(np.float32(k))
        ctx.t2, ctx.height = _triangle(t)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None, None]:
        (x,) = ctx.saved_tensors
        slope = ctx.k * (ctx.height - torch.abs(ctx.t2 * x))
        return slope.clamp(min=0) * grad, None, None, None


def _standardize(x: Tensor) -> tuple[Tensor, Tensor]:
    """(x - mean, (x - mean) / std) per sample or row over dims (1, 2, 3), unbiased std, no eps."""
    centred = x - x.mean(dim=(1, 2, 3), keepdim=True)
    return centred, centred / centred.std(dim=(1, 2, 3), keepdim=True)


@QUANTIZERS.register()
class RbnnWeight(WeightQuantizer):
    """RBNN's weight binarizer, with its rotation state R1 [a, a], R2 [b, b] and angles `rotate` [O,1,1,1].

    Forward, for latent W [O, C, K, K], a x b = C K K (factor_pair):
      1. W2 = (W - mean_r W) / std_r(W - mean_r W) (unbiased std, no eps); X = W2 as [O, a, b].
      2. Rotation update, in training only, once `epoch` is set (> -1) and a multiple of
         rotation_update; the first training forward then sets `epoch` back to -1, as the
         authors' trainer does from the epoch's second batch on. Three rounds on detached X:
         B = sign(R1^T X_o R2); D1 = sum_o B_o R2^T X_o^T = U S V^T, R1 <- V U^T;
         D2 = sum_o X_o^T R1 B_o = U S V^T, R2 <- U V^T (R1 updated with the old R2, R2 with the new R1).
      3. W3 = W2 + |sin(rotate)| * (stopgrad(R1^T X R2) - W2).
      4. W_b = sign(W3) (sign(0) = 0).
    Backward: dL/dW3 = max(0, k (2 sqrt(t^2/2) - |t^2 W3|)) * dL/dW_b; to W2 times (1 - |sin(rotate)|),
    then through the standardisation to W; to rotate: sign(sin) cos(rotate) * sum(delta * dL/dW3).
    Nothing flows through the rotation matrices.
    Reference: Lin et al., "Rotated Binary Neural Network", NeurIPS 2020, Eq. 8-18;
    lmbxmu/RBNN modules/binarized_modules.py (BinarizeConv2d, BinaryQuantize).
    """

    name = "rbnn_weight"
    settings = ("k", "t", "epoch", "rotation_update")
    reference_state = {"rotate": "rotate", "R1": "R1", "R2": "R2"}

    def __init__(self, weight: Tensor, k: float = 10.0, t: float = 0.1, epoch: int = -1,
                 rotation_update: int = 1) -> None:
        super().__init__()
        self.k, self.t, self.epoch, self.rotation_update = float(k), float(t), int(epoch), int(rotation_update)
        out_channels = weight.shape[0]
        self.a, self.b = factor_pair(weight[0].numel())
        self.register_buffer("R1", random_rotation(self.a).to(weight.device))
        self.register_buffer("R2", random_rotation(self.b).to(weight.device))
        self.rotate = nn.Parameter(torch.ones(out_channels, 1, 1, 1, device=weight.device) * math.pi / 2)

    def configure(self, **values: Any) -> None:
        if "rotation_update" in values and int(values["rotation_update"]) < 1:
            raise ValueError(f"rbnn rotation_update must be 1 or more, not {values['rotation_update']!r}")
        super().configure(**values)

    @torch.no_grad()
    def update_rotation(self, x: Tensor) -> None:
        """Step 2's three alternating rounds for X [O, a, b], writing R1 and R2."""
        r1, r2 = self.R1, self.R2
        xt = x.transpose(1, 2)
        for _ in range(3):
            b = torch.sign(r1.t() @ x @ r2)
            u, _, vh = torch.linalg.svd((b @ r2.t() @ xt).sum(0))
            r1 = vh.mT @ u.mT
            u, _, vh = torch.linalg.svd((xt @ r1 @ b).sum(0))
            r2 = u @ vh
        self.R1.copy_(r1)
        self.R2.copy_(r2)

    def _blend(self, weight: Tensor) -> Tensor:
        _, w2 = _standardize(weight)
        x = w2.reshape(w2.shape[0], self.a, self.b)  # a copy for channels-last weights
        if self.training and self.epoch > -1:
            if self.epoch % self.rotation_update == 0:
                self.update_rotation(x.detach())
            self.epoch = -1
        with torch.no_grad():
            rotated = (self.R1.t() @ x @ self.R2).view(w2.shape)
        return w2 + torch.abs(torch.sin(self.rotate)) * (rotated - w2)

    def forward(self, weight: Tensor) -> Tensor:
        w3 = self._blend(weight)
        return TriangleSign.apply(w3, w3, self.k, self.t)

    @torch.no_grad()
    def presign(self, weight: Tensor) -> Tensor:
        """W3 of step 3 with the stored rotation, without updating it: what the sign decides on."""
        _, w2 = _standardize(weight)
        rotated = (self.R1.t() @ w2.reshape(w2.shape[0], self.a, self.b) @ self.R2).view(w2.shape)
        return w2 + torch.abs(torch.sin(self.rotate)) * (rotated - w2)

    @torch.no_grad()
    def export(self, weight: Tensor) -> Tensor:
        return torch.sign(self.presign(weight))


@QUANTIZERS.register()
class RbnnInput(InputQuantizer):
    """RBNN's activation binarizer, train and eval alike.

    Forward: A2 = (A - mean_n) / std_n(A - mean_n) per sample over (C, H, W) (unbiased, no eps);
    A_b = sign(A2), computed as sign(A - mean_n), its value wherever std_n > 0 (for a constant
    sample the authors' 0/0 gives NaN, this 0).
    Backward: dL/dA2 = max(0, 2 sqrt(t'^2/2) - |t'^2 A2|) * dL/dA_b with t' = max(t, 1) (k = 1),
    then through the standardisation to A.
    Reference: lmbxmu/RBNN modules/binarized_modules.py (BinaryQuantize_a).
    """

    name = "rbnn_input"
    settings = ("t",)
    sign_valued = True
    centered = True

    def __init__(self, t: float = 0.1) -> None:
        super().__init__()
        self.t = float(t)

    def forward(self, x: Tensor) -> Tensor:
        if not torch.is_grad_enabled():
            return torch.sign(x - x.mean(dim=(1, 2, 3), keepdim=True))
        t = max(self.t, 1.0)
        if takes_native_activation(x):  # the same math in two sweeps; set_kernels("eager") runs the ops below
            t2, height = _triangle(t)
            return standardized_triangle_sign(x, 1.0, height, t2)
        centred, a2 = _standardize(x)
        return TriangleSign.apply(a2, centred, 1.0, t)


@QUANTIZERS.register()
class RbnnStandardizeInput(InputQuantizer):
    """RBNN's --a32 input: A2 = (A - mean_n) / std_n(A - mean_n) per sample, not binarized.
    Backward: through the standardisation. Reference: lmbxmu/RBNN BinarizeConv2d (args.a32)."""

    name = "rbnn_standardize"

    def forward(self, x: Tensor) -> Tensor:
        return _standardize(x)[1]


@METHODS.register()
class Rbnn(Method):
    """RBNN. Settings: k, t (the surrogates; initially 10 and 0.1 as the authors' attributes),
    epoch (the rotation update's trigger, -1 = none), rotation_update, a32 (real standardised
    inputs), epochs (the run's length, recorded beside epoch; the forward does not read it).

    The authors' training flags (utils/options.py; cifar | imagenet defaults):
      --Tmin             float  1e-2   "Tmin": t at epoch 0
      --Tmax             float  1e1    "Tmax": t approached at the last epoch
      --rotation_update  int    1      "Update rotaion matrix every n epoch"
      --a32              flag   False  "w1a32": real (standardised) activations
    and the generic ones: --epochs 1000 | 150, -b 256 | 512, -bt 128 | 256, --weight_decay 1e-4,
    --lr 0.1, --model resnet20_bireal_1w1a | resnet18_1w1a, --lr_type cos, --warm_up (README: on
    for CIFAR-10), --use_dali (ImageNet run.sh).
    """

    name = "rbnn"
    title = "RBNN"
    year = 2020
    architecture = "rbnn"
    defaults = {"k": 10.0, "t": 0.1, "epoch": -1, "rotation_update": 1, "a32": False, "epochs": None}
    options = (
        Option("Tmin", float, 1e-2, "RBNN t at epoch 0 (Tmin)", hparam=True, low=0.0, above=True),
        Option("Tmax", float, 10.0, "RBNN t approached at the last epoch (Tmax)", hparam=True, low=0.0, above=True),
        Option("rotation_update", int, 1, "RBNN: update the rotation matrices every n epochs", low=1),
        Option("a32", bool, False, "RBNN: real (standardised) activations, binary weights only", rebuilds=True),
    )

    def __init__(self, family: str = "cifar", **settings: Any) -> None:
        super().__init__(family, **settings)
        if int(self.settings["rotation_update"]) < 1:
            raise ValueError(f"rbnn rotation_update must be 1 or more, not {self.settings['rotation_update']!r}")

    @classmethod
    def script_defaults(cls, family: str) -> dict[str, Any]:
        """cifar/utils/options.py and imagenet/utils/options.py."""
        # README: PyTorch 1.1.0, whose CosineAnnealingLR is the closed form (see scheduler_last_epoch)
        common = {"lr": 0.1, "weight_decay": 1e-4, "Tmin": 1e-2, "Tmax": 10.0, "rotation_update": 1,
                  "authors_torch": "1.1"}
        if family == "cifar":
            return {**common, "model": "resnet20_bireal_1w1a", "epochs": 1000, "batch_size": 256,
                    "batch_size_test": 128}
        return {**common, "model": "resnet18_1w1a", "epochs": 150, "batch_size": 512, "batch_size_test": 256}

    def scheduler_last_epoch(self, warm_up: bool) -> int:
        """cifar/ and imagenet/main.py build CosineAnnealingLR at last_epoch = start_epoch - 4 with
        --warm_up: under their PyTorch 1.1's closed form the cosine then runs 4 epochs behind the
        loop, lr_e = lr (1 + cos(pi (e - 8) / (E - 4))) / 2 from epoch 5 on, never reaching 0."""
        return self.lr_start_epoch() - 4 * int(warm_up)

    def make_scale(self, conv: BinaryConv2d) -> nn.Parameter:
        # mean |W| of the parent's default init, before the model re-initialises the weights
        return nn.Parameter(conv.weight.detach().abs().mean(dim=(1, 2, 3)).reshape(-1, 1, 1).clone())

    def make_weight_quantizer(self, conv: BinaryConv2d) -> RbnnWeight:
        s = self.settings
        return RbnnWeight(conv.weight, s["k"], s["t"], s["epoch"], s["rotation_update"])

    def make_input_quantizer(self, conv: BinaryConv2d) -> InputQuantizer:
        return RbnnStandardizeInput() if self.settings["a32"] else RbnnInput(self.settings["t"])

    @torch.no_grad()
    def decision_points(self, layer: BinaryConv2d) -> tuple[Tensor, Tensor]:
        """The bit is sign(W3), W3 the standardised weight blended with its rotation: v = W3 (not the
        latent weight, whose sign alone does not decide the bit), flipping at 0."""
        w3 = layer.weight_quantizer.presign(layer.weight.detach().float())
        return w3.reshape(w3.shape[0], -1), torch.zeros(1, device=w3.device)

    def schedule(self, epoch: int, epochs: int, *, Tmin: float = 1e-2, Tmax: float = 10.0,
                 **hparams: Any) -> dict[str, Any]:
        """t = 10^(log10 Tmin + (log10 Tmax - log10 Tmin) / E * e) and k = max(1/t, 1), all in
        float32 as the authors' cpt_tk; `epoch` arms the rotation update of this epoch's first
        training batch (the quantizer disarms it there)."""
        lo = torch.log10(torch.tensor(Tmin, dtype=torch.float32))
        hi = torch.log10(torch.tensor(Tmax, dtype=torch.float32))
        t = torch.tensor([torch.pow(torch.tensor(10.0), lo + (hi - lo) / epochs * epoch)], dtype=torch.float32)
        k = max(1 / t, torch.tensor(1.0)).float()
        return {"k": float(k), "t": float(t), "epoch": int(epoch)}
