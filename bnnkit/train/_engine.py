"""One training epoch and one validation pass, as the authors' loops run them (REFERENCE.md §3.1 steps 4 and 6)."""
from __future__ import annotations

import contextlib
import math
from typing import Any, Callable

import torch
from torch import nn

from ..distill import distribution_loss
from ..errors import NonFiniteLossError
from ..methods import Method
from ._distributed import any_flag
from ._metrics import Meters, correct_topk
from ._runlog import RunLog, progress




AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(device: torch.device, amp: str | None):
    if amp is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=AMP_DTYPES[amp])


def train_one_epoch(model: nn.Module, criterion: nn.Module, optimizer: torch.optim.Optimizer, loader: Any, *,
                    method: Method, bare: nn.Module, epoch: int, device: torch.device, start_batch: int = 0,
                    meters: Meters | None = None, amp: str | None = None, scaler: Any = None,
                    log: RunLog | None = None, print_freq: int = 100, show: bool = True,
                    on_batch_end: Callable[[int, Meters], None] | None = None,
                    teacher: nn.Module | None = None, loss_mode: str = "ce") -> Meters:
    """Train `model` (maybe DDP-wrapped; `bare` is the module itself) over this rank's batches of the
    loader's current epoch, from batch `start_batch` on. Loss (`loss_mode`): ce, cross entropy; kd,
    bnnkit.distill.distribution_loss against `teacher`'s logits on the same batch (the teacher in
    eval mode under no_grad); ce+kd, their sum; plus the method's regulariser where the authors add
    it. With a teacher the meters also sum the distillation loss ('kd'). Returns this rank's
    unreduced meters."""
    model.train()
    meters = meters or Meters(kd=teacher is not None)
    batches = loader.iter_from(start_batch) if start_batch else iter(loader)
    total = len(loader)
    for i, (images, target) in enumerate(progress(batches, total - start_batch, f"epoch {epoch}", log, print_freq,
                                                   show and log is not None), start=start_batch + 1):
        images = images.to(device, non_blocking=True)
        target = target.to(device, non_blocking=True)
        with autocast(device, amp):
            output = model(images)
            kd = None
            if teacher is not None:
                teacher.eval()
                with torch.no_grad():
                    soft = teacher(images).float()
                kd = distribution_loss(output.float(), soft)
            loss = criterion(output.float(), target) if loss_mode != "kd" else None
            if kd is not None and loss_mode != "ce":
                loss = kd if loss is None else loss + kd
            loss = loss + method.regularizer(bare)
        bad = not math.isfinite(loss.item())
        if any_flag(bad, device):
            raise NonFiniteLossError(f"the training loss became {loss.item()} at epoch {epoch}, batch {i}")
        optimizer.zero_grad()
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        c1, c5 = correct_topk(output.detach(), target)
        n = target.shape[0]
        meters.add(loss.item() * n, float(c1), float(c5), n, kd=None if kd is None else kd.item() * n)
        if on_batch_end is not None:
            on_batch_end(i, meters)
    return meters


@torch.no_grad()
def evaluate(model: nn.Module, criterion: nn.Module, loader: Any, *, method: Method, device: torch.device,
             amp: str | None = None, log: RunLog | None = None, print_freq: int = 100, show: bool = True) -> dict[str, float]:
    """One validation pass in eval mode under no_grad, with the training loss (BiPer CIFAR includes
    its regulariser, quirk Q9). Returns loss, top1, top5 averaged over all processes' samples."""
    model.eval()
    meters = Meters()
    for images, target in progress(iter(loader), len(loader), "val", log, print_freq, show and log is not None):
        images = images.to(device, non_blocking=True)
        target = target.to(device, non_blocking=True)
        with autocast(device, amp):
            output = model(images)
            loss = criterion(output.float(), target)
            if method.regularizer_in_validation:
                loss = loss + method.regularizer(model)
        c1, c5 = correct_topk(output, target)
        n = target.shape[0]
        meters.add(loss.item() * n, float(c1), float(c5), n)
    return meters.reduce(device).averages()
