"""The authors' optimiser: parameter groups by name (each method's param_group_rule, REFERENCE.md §3.2) and the per-epoch learning rate (§3.3).

The learning rate is an explicit function of the epoch that reproduces how the authors' scripts
step torch.optim.lr_scheduler (warm-up overriding the group lr, the scheduler stepped only from
epoch 4·warm_up on, a chainable CosineAnnealingLR built at last_epoch = start_epoch) in the PyTorch
version the authors ran (1.11), independent of the installed one.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ..compat import reference_names
from ..methods import get_method


def param_groups(model: nn.Module, weight_decay: float, lr: float) -> list[dict[str, Any]]:
    """The authors' parameter groups for `model` (built by bnnkit.create_model), in their order.

    The authors' rules test substrings of their parameter names; bnnkit's names are theirs except
    quantizer state (SiMaN's B is `weight_quantizer.code`), so the rules run over the authors' names
    (bnnkit.compat.reference_names). Parameters without a gradient (B, beta) sit in a group as in the
    authors' code and are skipped by the optimiser step. Each group records its parameter names."""
    spec = model.bnnkit_spec
    decayed = get_method(spec["method"]).param_group_rule(spec["family"], spec["model"])
    theirs = reference_names(model)
    named = list(model.named_parameters())
    if decayed is None:
        return [{"params": [p for _, p in named], "names": [n for n, _ in named], "weight_decay": weight_decay,
                 "lr": lr, "initial_lr": lr}]
    on = {"params": [], "names": [], "weight_decay": weight_decay, "lr": lr, "initial_lr": lr}
    off = {"params": [], "names": [], "weight_decay": 0.0, "lr": lr, "initial_lr": lr}
    for name, p in named:
        g = on if decayed(theirs.get(name, name)) else off
        g["params"].append(p)
        g["names"].append(name)
    # the authors' order (ReActNet's train.py lists the undecayed group first)
    return [on, off] if get_method(spec["method"]).decayed_group_first else [off, on]


def build_optimizer(model: nn.Module, cfg: dict[str, Any]) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg["weight_decay"], cfg["lr"])
    for g in groups:
        g.pop("names")
    if cfg["optimizer"] == "adam":
        return torch.optim.Adam(groups, lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    return torch.optim.SGD(groups, lr=cfg["lr"], momentum=cfg["momentum"], weight_decay=cfg["weight_decay"])


def lr_per_epoch(lr: float, epochs: int, *, warm_up: bool = False, start_epoch: int = -1, lr_type: str = "cos",
                 lr_decay_step: list[int] | None = None, authors_torch: str = "1.11",
                 scheduler_last_epoch: int | None = None, steps_first: bool = False) -> list[float | None]:
    """The lr the authors' loop trains epoch e with, for e in 0..epochs-1 (None before start_epoch + 1).

    Simulates their loop (REFERENCE.md §3.1 steps 1 and 5) with the scheduler's own recurrence:
      cos    CosineAnnealingLR(T_max = E - 4w, eta_min 0, last_epoch = scheduler_last_epoch, by default
             start_epoch; RBNN builds it 4w epochs earlier). 1.11 and 2.x: the chainable form
             lr <- lr (1 + cos(pi n / T)) / (1 + cos(pi (n - 1) / T)) at step n; its initial step applies
             that recurrence in 1.11 and keeps the group lr in 2.x (which matters when it is built at
             last_epoch != -1, e.g. BiPer's stage 2). 1.1 (ReCU's and RBNN's PyTorch): the closed form
             lr (1 + cos(pi n / T)) / 2 at every step, whatever the group lr was.
      step   MultiStepLR(lr_decay_step, gamma 0.1), built fresh.
      linear LambdaLR with factor 1 - (n - 4w)/(E - 4w) of the scheduler's step count n.
    `steps_first`: the loop steps the scheduler at the start of each epoch, before its first batch,
    instead of at its end (ReActNet's train.py, quirk Q2: epoch e trains with step e + 1's value,
    linear: lr (1 - (e + 1)/E), the last epoch with 0).
    """
    w = 1 if warm_up else 0
    total = epochs - 4 * w
    cur = lr
    if lr_type == "cos" and authors_torch == "1.1":
        def step(cur: float, n: int) -> float:
            return lr * (1 + math.cos(math.pi * n / total)) / 2
        n = (start_epoch if scheduler_last_epoch is None else scheduler_last_epoch) + 1
        cur = step(cur, n)
    elif lr_type == "cos":
        def step(cur: float, n: int) -> float:
            if n == 0 and authors_torch == "1.11":  # 1.11 keeps the group lr at 0; 2.x only at its initial step
                return cur
            if (n - 1 - total) % (2 * total) == 0:
                return cur + lr * (1 - math.cos(math.pi / total)) / 2
            return (1 + math.cos(math.pi * n / total)) / (1 + math.cos(math.pi * (n - 1) / total)) * cur
        n = (start_epoch if scheduler_last_epoch is None else scheduler_last_epoch) + 1
        if authors_torch == "1.11":  # its initial step applies the recurrence; 2.x's keeps the group lr
            cur = step(cur, n)
    elif lr_type == "step":
        milestones = sorted(lr_decay_step or [])

        def step(cur: float, n: int) -> float:
            return cur * 0.1 ** milestones.count(n)
        n = 0
    else:
        def step(cur: float, n: int) -> float:
            return lr * (1 - (n - 4 * w) / total)
        n = start_epoch + 1
        cur = step(cur, n)
    out: list[float | None] = [None] * epochs
    for e in range(start_epoch + 1, epochs):
        if steps_first and e >= 4 * w:
            n += 1
            cur = step(cur, n)
        if warm_up and e < 5:
            cur = lr * (e + 1) / 5
        out[e] = cur
        if not steps_first and e >= 4 * w:
            n += 1
            cur = step(cur, n)
    return out
