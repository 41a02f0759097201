"""The authors' checkpoints: load them into bnnkit models, and name bnnkit's state as they did.

bnnkit keeps the authors' module names; only state the quantizers own is named differently
(SiMaN's B is `weight_quantizer.code`; BiPer's beta lives on its weight quantizer), and the
per-layer settings the authors stored as state (SiMaN's percent, BiPer's tau) are plain
settings here. Loading never executes code from the file (torch.load(weights_only=True)).
"""
from __future__ import annotations

import os
from typing import Any, Mapping

import torch
from torch import Tensor, nn

from .errors import CheckpointError
from .nn.layers import BinaryConv2d
from .models import create_model




def reference_names(model: nn.Module) -> dict[str, str]:
    """Map every key of `model.state_dict()` to the key the authors' code uses for it."""
    renames: dict[str, str] = {}
    for name, module in model.named_modules():
        if not isinstance(module, BinaryConv2d):
            continue
        for quantizer_name in ("weight_quantizer", "input_quantizer"):
            q = getattr(module, quantizer_name)
            for ours, theirs in getattr(q, "reference_state", {}).items():
                renames[f"{name}.{quantizer_name}.{ours}"] = f"{name}.{theirs}"
            for ours, theirs in getattr(q, "reference_conv_state", {}).items():
                renames[f"{name}.{ours}"] = f"{name}.{theirs}"
    return {key: renames.get(key, key) for key in model.state_dict()}


def read_state_dict(source: Mapping[str, Tensor] | str | os.PathLike) -> dict[str, Tensor]:
    """A state_dict from a mapping or a file (an authors' checkpoint dict with 'state_dict', or a
    bare state_dict), with DataParallel's `module.` prefix removed. Never unpickles code."""
    if isinstance(source, (str, os.PathLike)):
        try:
            source = torch.load(source, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise CheckpointError(f"checkpoint {os.fspath(source)!r} does not exist; check the path") from None
        except Exception as exc:  # truncated zip, pickle with code, not a torch file at all
            raise CheckpointError(f"cannot read checkpoint {os.fspath(source)!r} ({type(exc).__name__}: "
                                  f"{str(exc).splitlines()[0][:200]}); is the file complete and a PyTorch checkpoint?") from None
    if isinstance(source, Mapping) and "state_dict" in source and isinstance(source["state_dict"], Mapping):
        source = source["state_dict"]
    if not isinstance(source, Mapping):
        raise CheckpointError(f"expected a state_dict, got {type(source).__name__}")
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in source.items()}


def _fit_shape(key: str, value: Tensor, want: torch.Size, reshapeable: set[str]) -> Tensor:
    if value.shape == want:
        return value
    if value.numel() == want.numel() and key in reshapeable:
        return value.reshape(want)  # state the authors kept in another shape (SiMaN's B [O,1,k], BiPer's tau [])
    raise CheckpointError(f"{key}: shape {tuple(value.shape)} in the checkpoint, {tuple(want)} in the model")


def _quantizer_keys(net: nn.Module) -> tuple[dict[str, tuple[nn.Module, str]], set[str]]:
    """The authors' keys of state the quantizers own: their settings (key -> (quantizer, attribute))
    and every key a quantizer declares, whose shape may differ from ours (a reshape of equal size)."""
    settings: dict[str, tuple[nn.Module, str]] = {}
    declared: set[str] = set()
    for name, module in net.named_modules():
        if isinstance(module, BinaryConv2d):
            for q in (module.weight_quantizer, module.input_quantizer):
                for ref, attr in getattr(q, "reference_settings", {}).items():
                    settings[f"{name}.{ref}"] = (q, attr)
                declared |= {f"{name}.{theirs}" for theirs in getattr(q, "reference_state", {}).values()}
                declared |= {f"{name}.{key}" for key in getattr(q, "reference_reshaped", ())}
    return settings, declared | set(settings)


def load_reference(state_dict_or_path: Mapping[str, Tensor] | str | os.PathLike, method: str, model: str,
                   num_classes: int | None = None, dataset: str | None = None, **settings: Any) -> nn.Module:
    """Build bnnkit's `model` for `method` and load an authors' state_dict into it, strictly:
    every key of the checkpoint is used and every state of the model is filled, shapes checked.
    Per-layer settings stored in the checkpoint (percent, tau) are applied layer by layer."""
    state = read_state_dict(state_dict_or_path)
    net = create_model(model, method=method, dataset=dataset, num_classes=num_classes, **settings)
    theirs_of = reference_names(net)
    ours_of = {v: k for k, v in theirs_of.items()}
    setting_keys, reshapeable = _quantizer_keys(net)

    unexpected = [k for k in state if k not in ours_of and k not in setting_keys]
    missing = [k for k in ours_of if k not in state]
    if unexpected or missing:
        what = f"{method} {model} ({net.bnnkit_spec['dataset']}, {net.bnnkit_spec['num_classes']} classes)"
        detail = "; ".join(part for part in (
            f"missing {len(missing)} key(s), e.g. {', '.join(missing[:3])}" if missing else "",
            f"unexpected {len(unexpected)} key(s), e.g. {', '.join(unexpected[:3])}" if unexpected else "") if part)
        raise CheckpointError(f"this checkpoint is not a {what} checkpoint: {detail}. "
                              f"Pass the method, model and dataset it was trained with.")
    own = net.state_dict()
    loaded = {ours_of[k]: _fit_shape(k, v, own[ours_of[k]].shape, reshapeable) for k, v in state.items() if k in ours_of}
    net.load_state_dict(loaded, strict=True)
    for key, (quantizer, attr) in setting_keys.items():
        if key in state:
            value = float(state[key].reshape(-1)[0]) if state[key].numel() else None
            if value is not None:
                setattr(quantizer, attr, value)
    return net
