"""The distillation teacher (`--teacher`): a torchvision model by name, or a bnnkit checkpoint.

The teacher runs in eval mode, without gradients, on the student's device, fed the student's
augmented batch; under DDP every process runs its own copy on its own shard (nothing to reduce:
the teacher does not train). Weights: `--teacher_weights PATH` (a state_dict, an authors' dict
with 'state_dict', `module.` prefixes dropped), else torchvision's pretrained ones, from its cache
or downloaded where the internet is reachable (never in tests).
"""
from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from ..compat import read_state_dict
from ..errors import CheckpointError, ConfigError
from . import _checkpoint as ck


def check_teacher(name: str) -> None:
    """Refuse a --teacher that is neither an existing file nor a torchvision classification model
    name, before any data is decoded (the CLI calls it at parse time, build_teacher again)."""
    if os.path.isfile(name):
        return
    if name.endswith((".pt", ".pth", ".tar")) or os.sep in name:
        raise ConfigError(f"--teacher {name}: there is no such file; check the path")
    try:
        import torchvision
    except ImportError:
        return  # build_teacher says so if the teacher is used
    if name not in torchvision.models.list_models(module=torchvision.models):
        raise ConfigError(f"--teacher {name!r} is neither a checkpoint file nor a torchvision classification "
                          f"model (e.g. resnet34); check the name or the path")


def _torchvision_teacher(name: str, num_classes: int, weights_path: str | None) -> nn.Module:
    try:
        import torchvision
    except ImportError:
        raise ConfigError(f"--teacher {name}: torchvision is not installed; install it or pass a bnnkit checkpoint") from None
    if weights_path is not None:
        model = torchvision.models.get_model(name, weights=None, num_classes=num_classes)
        try:
            model.load_state_dict(read_state_dict(weights_path), strict=True)
        except RuntimeError as exc:
            raise CheckpointError(f"--teacher_weights {weights_path}: not a {name} with {num_classes} classes "
                                  f"({str(exc).splitlines()[0][:160]}); pass the matching file") from None
        return model
    weights = torchvision.models.get_model_weights(name).DEFAULT
    classes = len(weights.meta.get("categories") or ())
    if classes != num_classes:
        raise ConfigError(f"--teacher {name}: torchvision's pretrained weights have {classes} classes, this dataset "
                          f"{num_classes}: pass --teacher_weights PATH (a {name} trained on it) or a bnnkit checkpoint")
    model = torchvision.models.get_model(name, weights=None)
    try:
        state = weights.get_state_dict(progress=False, check_hash=True)  # torchvision's cache first, else the internet
    except Exception as exc:
        raise ConfigError(f"--teacher {name}: its pretrained weights are not in torchvision's cache and cannot be "
                          f"downloaded ({type(exc).__name__}); pass --teacher_weights PATH") from None
    model.load_state_dict(state)
    return model


def build_teacher(cfg: dict[str, Any], num_classes: int, device: torch.device) -> nn.Module | None:
    """The configured teacher in eval mode with frozen parameters on `device`; None without --teacher
    or for --loss ce."""
    name = cfg.get("teacher")
    if not name or cfg.get("loss", "ce") == "ce":
        return None
    check_teacher(name)
    if os.path.isfile(name):
        ckpt = ck.read_checkpoint(name)
        if not ck.is_bnnkit(ckpt):
            raise CheckpointError(f"--teacher {name}: not a bnnkit checkpoint; give a bnnkit checkpoint or a "
                                  f"torchvision model name (with --teacher_weights for its weights)")
        teacher = ck.model_from_checkpoint(ckpt, name)
    else:
        teacher = _torchvision_teacher(name, num_classes, cfg.get("teacher_weights"))
    teacher = teacher.to(device).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


def describe_teacher(cfg: dict[str, Any]) -> str:
    w = cfg.get("teacher_weights")
    return f"{cfg['teacher']}" + (f" (weights {w})" if w else "")
