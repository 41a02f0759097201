"""Accuracy, averaged meters (reduced across processes), BiPer's quantisation error and the bit-flip ratio."""
from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from ..nn.layers import binary_convs


def correct_topk(output: Tensor, target: Tensor, ks: tuple[int, ...] = (1, 5)) -> list[Tensor]:
    """Number of samples whose label is among the top-k logits, for each k (k capped at the class count)."""
    maxk = min(max(ks), output.shape[1])
    pred = output.topk(maxk, dim=1).indices
    hit = pred.eq(target.reshape(-1, 1))
    return [hit[:, : min(k, maxk)].any(dim=1).sum() for k in ks]


class Meters:
    """Batch-size-weighted sums of loss and correct counts (and, when distilling, of the
    distillation loss 'kd'); `reduce()` sums them over processes."""

    def __init__(self, sums: dict[str, float] | None = None, kd: bool = False) -> None:
        self.sums = dict(sums or {"loss": 0.0, "top1": 0.0, "top5": 0.0, "n": 0.0, **({"kd": 0.0} if kd else {})})

    def add(self, loss_sum: float, top1: float, top5: float, n: int, kd: float | None = None) -> None:
        self.sums["loss"] += loss_sum
        self.sums["top1"] += top1
        self.sums["top5"] += top5
        self.sums["n"] += n
        if kd is not None:
            self.sums["kd"] = self.sums.get("kd", 0.0) + kd

    def reduce(self, device: torch.device) -> "Meters":
        if not (dist.is_available() and dist.is_initialized()):
            return Meters(self.sums)
        keys = sorted(self.sums)
        t = torch.tensor([self.sums[k] for k in keys], dtype=torch.float64, device=device)
        dist.all_reduce(t)
        return Meters(dict(zip(keys, t.tolist())))

    def averages(self) -> dict[str, float]:
        n = max(self.sums["n"], 1.0)
        out = {"loss": self.sums["loss"] / n, "top1": 100.0 * self.sums["top1"] / n, "top5": 100.0 * self.sums["top5"] / n}
        if "kd" in self.sums:
            out["kd"] = self.sums["kd"] / n
        return out


@torch.no_grad()
def quantization_error(model: nn.Module, freq: float | None = None) -> dict[str, Any] | None:
    """Per binary conv l, the method's quantisation error and mean|W_l| (BiPer's QE and b,
    REFERENCE.md §5); totals are the unweighted sums over layers. With `freq`, BiPer's definition
    mean|sin(f W_l) - sign(sin(f W_l))| at that frequency for any method's weights. None where a
    layer's method defines no QE and no frequency is given."""
    layers = []
    for name, conv in binary_convs(model):
        w = conv.weight.float()
        if freq is not None:
            s = torch.sin(freq * w)
            qe = (s - torch.sign(s)).abs().mean()
        else:
            qe = conv.weight_quantizer.quantization_error(conv.weight)
            if qe is None:
                return None
        layers.append({"layer": name, "qe": float(qe), "b": float(w.abs().mean())})
    return {"layers": layers, "qe": sum(l["qe"] for l in layers), "b": sum(l["b"] for l in layers)}


@torch.no_grad()
def sign_bits(model: nn.Module) -> dict[str, Tensor]:
    """The binary weights' sign bits (True = +1) per binary conv, as each weight quantizer gives
    them (BiPer stage 1, whose forward uses the real sin(f W), gives the bits it would binarize to)."""
    return {name: conv.weight_quantizer.sign_bits(conv.weight).cpu() for name, conv in binary_convs(model)}


def flip_ratio(before: dict[str, Tensor] | None, after: dict[str, Tensor]) -> float | None:
    """Fraction of all binary weight bits that differ between two sign-bit snapshots."""
    if not before or before.keys() != after.keys():
        return None
    changed = sum(int((before[k] != after[k]).sum()) for k in after)
    total = sum(after[k].numel() for k in after)
    return changed / max(total, 1)
