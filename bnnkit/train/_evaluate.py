"""Evaluate a checkpoint (bnnkit's, or the authors' through bnnkit.compat.load_reference)."""
from __future__ import annotations

import os
import re
from typing import Any

from torch import nn

from ..compat import load_reference
from . import _checkpoint as ck
from ._config import ConfigError, resolve
from ._data import load_data
from ._distributed import setup
from ._engine import evaluate
from ..methods import method_of


def _authors_freq(path: str) -> float | None:
    """The authors kept f only in the config.txt beside the checkpoint (`freq:  20.0`)."""
    cfg = os.path.join(os.path.dirname(os.path.abspath(path)), "config.txt")
    if os.path.isfile(cfg):
        m = re.search(r"^freq:\s+(\d+(?:\.\d+)?)\s*$", open(cfg, errors="replace").read(), re.M)
        if m:
            return float(m.group(1))
    return None


def load_any(path: str, *, model: str | None = None, method: str | None = None, dataset: str | None = None,
             freq: float | None = None, stage: int | None = None) -> tuple[nn.Module, dict[str, Any] | None]:
    """(model, bnnkit checkpoint or None) from a bnnkit or authors' checkpoint.

    A bnnkit checkpoint describes itself (so f is the trained one, not a CLI default: quirk Q17 is
    fixed); any of model/method/dataset/freq/stage passed must agree with it. An authors'
    checkpoint needs model, method and dataset; BiPer's f comes from --freq or the authors'
    config.txt next to the file, and its stage defaults to 2 (their eval.sh runs main_stage2.py)."""
    obj = ck.read_checkpoint(path)
    if ck.is_bnnkit(obj):
        ck.check_matches(obj, path, method=method, model=model, dataset=dataset)
        s = obj["spec"]["settings"]
        if freq is not None and "freq" in s and float(freq) != float(s["freq"]):
            raise ConfigError(f"--freq {freq} contradicts the checkpoint's trained frequency {s['freq']}: drop --freq")
        if stage is not None and "stage" in s and int(stage) != int(s["stage"]):
            raise ConfigError(f"--stage {stage} contradicts the checkpoint's stage {s['stage']}: drop --stage")
        return ck.model_from_checkpoint(obj, path), obj
    missing = [f"--{k}" for k, v in (("model", model), ("method", method), ("dataset", dataset)) if v is None]
    if missing:
        raise ConfigError(f"{path} is not a bnnkit checkpoint (an authors' file?): pass {', '.join(missing)} "
                          f"to say what it holds")
    settings: dict[str, Any] = {}
    if method == "biper":
        f = freq if freq is not None else _authors_freq(path)
        if f is None:
            raise ConfigError(f"{path} is an authors' BiPer checkpoint without a config.txt beside it: "
                              f"pass --freq (the frequency it was trained with)")
        settings = {"freq": f, "stage": 2 if stage is None else stage}
    return load_reference(obj, method, model, dataset=dataset, **settings), None


def evaluate_checkpoint(path: str, opts: dict[str, Any]) -> dict[str, float]:
    """One validation pass of a checkpoint on opts['data_path'] (val split), as the authors' `-e`."""
    model, obj = load_any(path, model=opts.get("model"), method=opts.get("method"), dataset=opts.get("dataset"),
                          freq=opts.get("freq"), stage=opts.get("stage"))
    spec = model.bnnkit_spec
    base = dict(obj["config"]) if obj else {}
    keep = {k: base[k] for k in ("batch_size_test", "backend", "seed") if k in base}
    raw = {**keep, "method": spec["method"], "model": spec["model"], "dataset": spec["dataset"],
           **{k: v for k, v in opts.items() if k in ("data_path", "batch_size_test", "val_subset", "workers", "backend",
                                                      "device", "cache_dir", "amp") and v is not None}}
    if spec["method"] == "biper":
        raw["freq"] = spec["settings"]["freq"]
    cfg = resolve(raw)
    d = setup(cfg["device"])
    _, val_loader = load_data(cfg, d, train=False)
    model = model.to(d.device)
    res = evaluate(model, nn.CrossEntropyLoss(), val_loader, method=method_of(model), device=d.device,
                   amp=cfg["amp"], log=None)
    return {**res, "images": val_loader.num_samples * d.world_size}
