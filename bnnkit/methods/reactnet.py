"""ReActNet (Liu et al., ECCV 2020): RSign and RPReLU, trained in two steps with distillation.

RSign shifts each channel by a learned bias before the sign; RPReLU shifts, applies a per-channel
PReLU and shifts again. Step 1 trains real weights behind binary activations; step 2 binarizes the
weights too (HardBinaryConv: sign(W) times the per-channel mean |W|, a clipped straight-through
gradient without the scale). Both steps learn from a float teacher's logits (bnnkit.distill) with
Adam and a linear decay. Reproduces liuzechun/ReActNet (mobilenet/ = ReActNet-A, resnet/ = ReActNet
on Bi-Real-Net) as METHODS.md §4 specifies; the models are in bnnkit/models/reactnet.py.

RSign's bias lives in the block, as the authors' `move11`/`move21`/`move0` modules, in front of a
binary conv whose input quantizer is the pure sign: the authors' state names stay as they are and
the packed kernels see sign() inputs.
"""
from __future__ import annotations

import re
from typing import Any

import torch
from torch import Tensor, nn

from ..nn.layers import BinaryConv2d, binary_convs
from ..nn.quantizers import QUANTIZERS, ApproxSignInput, WeightQuantizer
from . import METHODS, Method, Option


class LearnableBias(nn.Module):
    """y = x + b with b [1, C, 1, 1], initialised to 0 (the authors' LearnableBias); ordinary gradient."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(1, channels, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.bias


def rprelu(x: Tensor, shift_in: LearnableBias, prelu: nn.PReLU, shift_out: LearnableBias) -> Tensor:
    """RPReLU(x) = PReLU(x + gamma) + zeta, one slope and two shifts per channel (paper Eq. 4).
    The three modules keep the authors' names in each block (move12/prelu1/move13, ...)."""
    return shift_out(prelu(shift_in(x)))


@QUANTIZERS.register()
class ReactRealWeight(WeightQuantizer):
    """Step 1: the "binary" convolutions keep real weights (plain nn.Conv2d in the authors' code).

    Forward: W_b = W.  Backward: dL/dW = dL/dW_b.
    Reference: liuzechun/ReActNet mobilenet/1_step1/reactnet.py, resnet/1_step1/birealnet.py.
    """

    name = "reactnet_real_weight"
    pure = True

    def forward(self, weight: Tensor) -> Tensor:
        return weight

    @torch.no_grad()
    def export(self, weight: Tensor) -> Tensor:
        raise ValueError("a ReActNet step-1 layer has real weights; export a step-2 model (--step 2)")

    @torch.no_grad()
    def sign_bits(self, weight: Tensor) -> Tensor:
        return weight > 0  # the bits step 2 would binarize these weights to


def _channel_mean_abs(weight: Tensor) -> Tensor:
    """a_o [O, 1, 1, 1]: mean |W| over (c, kh, kw), as three nested means as the authors compute it."""
    return weight.abs().mean(dim=3, keepdim=True).mean(dim=2, keepdim=True).mean(dim=1, keepdim=True)


class _HardBinary(torch.autograd.Function):
    """Forward a_o sign(W); backward g * 1{|W| < 1} (no a_o, nothing through a_o or the sign)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(weight: Tensor) -> Tensor:
        return _channel_mean_abs(weight) * torch.sign(weight)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        ctx.save_for_backward(inputs[0])

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        (weight,) = ctx.saved_tensors
        return grad * (weight.abs() < 1).to(grad.dtype)


@QUANTIZERS.register()
class HardBinaryWeight(WeightQuantizer):
    """Step 2's HardBinaryConv weights.

    Forward: W_b = a_o * sign(W), a_o = mean over (c, kh, kw) of |W[o]| (three nested means, as the
    authors compute it); sign(0) = 0.
    Backward: dL/dW = dL/dW_b * 1{|W| < 1}: the clipped straight-through estimator WITHOUT the
    factor a_o and with no gradient through a_o (the authors build W_b as stopgrad(a sign W) -
    stopgrad(clamp(W, -1, 1)) + clamp(W, -1, 1); quirk Q8).
    ReActNet-A stores the latent weight flat, a parameter `weights` [O*C*K*K, 1] (row-major view of
    [O, C, K, K]); Bi-Real keeps `weight` [O, C, K, K]: `flat` selects the authors' layout.
    Reference: Liu et al., "ReActNet", ECCV 2020; liuzechun/ReActNet mobilenet/2_step2/reactnet.py
    and resnet/2_step2/birealnet.py (HardBinaryConv); METHODS.md §4.2.
    """

    name = "reactnet_hard_binary_weight"
    pure = True

    def __init__(self, flat: bool = False) -> None:
        super().__init__()
        self.flat = flat
        if flat:  # instance declarations read by bnnkit.compat
            self.reference_conv_state = {"weight": "weights"}
            self.reference_reshaped = ("weights",)

    def forward(self, weight: Tensor) -> Tensor:
        return _HardBinary.apply(weight)

    @torch.no_grad()
    def export(self, weight: Tensor) -> Tensor:
        return _HardBinary.forward(weight)

    @torch.no_grad()
    def quantization_error(self, weight: Tensor) -> Tensor:
        """mean |W - a_o sign(W)|: what the scaled binary weight leaves of the latent one."""
        return (weight.float() - _HardBinary.forward(weight.float())).abs().mean()

    @torch.no_grad()
    def sign_and_scale(self, weight: Tensor) -> tuple[Tensor, Tensor]:
        """sign(W) and a_o (the three nested means of the forward), which _ReactConv's eval multiplies
        after the conv."""
        return torch.sign(weight), _channel_mean_abs(weight).reshape(-1)


_DECAYED = re.compile(r"conv|move\d+\.bias$|binary_\w+\.weight$|downsample\.1\.weight$")


def authors_decayed(name: str) -> bool:
    """train.py's weight-decay group, `p.ndim == 4 or 'conv' in name` over the `module.`-prefixed
    names, written over the authors' names and layouts: the 4-D tensors are the stem and binary
    conv weights (step 1, and Bi-Real's step 2), the LearnableBias biases [1, C, 1, 1] and Bi-Real's
    downsample conv; ReActNet-A's step-2 flat `weights` are 2-D and their names hold no 'conv' (Q7)."""
    return bool(_DECAYED.search(name))


@METHODS.register()
class ReActNet(Method):
    """ReActNet. Settings: step (1: real weights, binary activations; 2: binary weights), and the
    authors' model constructor arguments recorded by their golden cases (`stage_out_channel` of
    ReActNet-A, `layers` of Bi-Real; None: the published ones).

    The authors' train.py flags (both steps, both families): --batch_size 512, --epochs 256,
    --learning_rate 1e-3 (run.sh: 1.25e-3 / 2.5e-3 for 128 epochs), --weight_decay 0 (run.sh: 1e-5
    in step 1, 0 in step 2), --teacher resnet34, Adam, LambdaLR(1 - n/E) stepped before each epoch.
    Loss: only DistributionLoss against the teacher (`--loss kd`, the default here).
    Step 2 starts from step 1's last checkpoint: ReActNet-A's binary-conv weights do not load there
    (`weight` -> `weights`, strict=False) and start again at U[0, 0.001) (Q1), unless
    `--carry_weights` keeps step 1's real weights as the latent weights.
    """

    name = "reactnet"
    title = "ReActNet"
    year = 2020
    architecture = "reactnet"
    defaults = {"step": 1, "stage_out_channel": None, "layers": None}
    options = (
        Option("step", int, 1, "ReActNet step (1: binary activations, real weights; 2: binary weights too)",
               choices=(1, 2), rebuilds=True, per_stage=True),
        Option("carry_weights", bool, False, "ReActNet step 2: keep step 1's conv weights as the latent binary "
               "weights (the authors' ReActNet-A code restarts them at U[0, 0.001), Q1)", hparam=True),
    )
    export_settings = {"step": 2}
    bench_cases = {"reactnet1": {"step": 1}, "reactnet2": {"step": 2}}
    bench_models = {"imagenet": ("reactnet", "birealnet18")}  # #23's bench at ImageNet resolution
    lr_steps_first = True  # LambdaLR stepped before each epoch's first batch (Q2)
    decayed_group_first = False  # train.py's groups: [rest, wd 0], [decayed]

    @classmethod
    def script_defaults(cls, family: str) -> dict[str, Any]:
        """train.py's argparse defaults (both families) and its fixed choices."""
        return {"model": "reactnet" if family == "imagenet" else "birealnet20", "epochs": 256, "batch_size": 512,
                "batch_size_test": 512, "lr": 1e-3, "weight_decay": 0.0, "optimizer": "adam", "lr_type": "linear",
                "loss": "kd", "teacher": "resnet34"}

    @classmethod
    def param_group_rule(cls, family: str, model_name: str):
        return authors_decayed

    @classmethod
    def augmentation(cls, dataset: str, backend: str) -> dict[str, Any]:
        # train.py's ImageNet pipeline adds Lighting(0.1) to the uint8 image before the flip (Q6): the
        # same PCA, units and truncation as BiPer's, which bnnkit's torch and DALI loaders both apply
        return {"lighting": dataset == "imagenet"}

    @classmethod
    def authors_settings(cls, path: str, given: dict[str, Any]) -> dict[str, Any]:
        """The authors' checkpoints record no step: step 2 (their released models) unless given."""
        return {"step": 2 if given.get("step") is None else given["step"]}

    def __init__(self, family: str = "cifar", **settings: Any) -> None:
        super().__init__(family, **settings)
        if self.settings["step"] not in (1, 2):
            raise ValueError(f"reactnet step must be 1 or 2, not {self.settings['step']!r}")

    def make_weight_quantizer(self, conv: BinaryConv2d) -> nn.Module:
        if self.settings["step"] == 1:
            return ReactRealWeight()
        with torch.no_grad():  # HardBinaryConv draws its latent weights as torch.rand(...) * 0.001
            conv.weight.copy_(torch.rand(conv.weight.shape) * 0.001)
        return HardBinaryWeight(flat=getattr(conv, "flat_reference", False))

    def make_input_quantizer(self, conv: BinaryConv2d) -> ApproxSignInput:
        # ReActNet's BinaryActivation (the sign half of RSign; the bias is the block's LearnableBias):
        # sign(x) - stopgrad(F(x)) + F(x), i.e. Bi-Real's ApproxSign, METHODS.md §4.1.
        return ApproxSignInput()

    def conv(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, padding: int = 0,
             groups: int = 1, binary_input: bool = True, flat_reference: bool = False) -> BinaryConv2d:
        """A binary conv; `flat_reference`: the authors store its step-2 weight flat (ReActNet-A)."""
        return _ReactConv(in_channels, out_channels, kernel_size, stride, padding, groups=groups, method=self,
                          binary_input=binary_input, flat_reference=flat_reference)

    def starts_from_checkpoint(self) -> bool:
        return self.settings["step"] == 2

    def on_stage_start(self, model: nn.Module, source_settings: dict[str, Any] | None = None,
                       carry_weights: bool = False, **hparams: Any) -> None:
        """Step 2 from a step-1 checkpoint: the convs whose authors' weight key changes between the steps
        (ReActNet-A's `weights`) lose what they loaded and start again at U[0, 0.001), as strict=False
        leaves them in the authors' train.py (Q1), unless `carry_weights`."""
        if self.settings["step"] != 2 or carry_weights or (source_settings or {}).get("step", 1) != 1:
            return
        with torch.no_grad():
            for _, conv in binary_convs(model):
                if getattr(conv.weight_quantizer, "flat", False):
                    conv.weight.copy_(torch.rand(conv.weight.shape, device=conv.weight.device) * 0.001)

    def describe(self) -> str:
        return f"{self.name} step {self.settings['step']}"


class _ReactConv(BinaryConv2d):
    """A BinaryConv2d that knows, before its quantizer is made, whether the authors flatten its weight.

    Without autograd a step-2 conv computes conv(sign(x), sign(W)) * a_o (HardBinaryWeight's
    sign_and_scale): exact integers, then one rounding per output, as packed eval and the packed
    runtime do (`bnnkit export`: a_o is the conv's prescale), so both give the model's eval logits
    bit for bit. The authors' conv(x, a_o sign(W)) sums the same products in another rounding
    order (relative differences ~1e-7); training keeps their form."""

    def __init__(self, *args: Any, flat_reference: bool = False, **kwargs: Any) -> None:
        self.__dict__["flat_reference"] = flat_reference  # read by make_weight_quantizer inside super().__init__
        super().__init__(*args, **kwargs)
