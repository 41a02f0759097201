"""Evaluate a checkpoint (bnnkit's, or the authors' through bnnkit.compat.load_reference)."""
from __future__ import annotations

from typing import Any

from torch import nn

from ..compat import load_reference
from ..methods import all_options, get_method, method_of
from . import _checkpoint as ck
from ._config import ConfigError, resolve
from ._data import load_data
from ._distributed import setup
from ._engine import evaluate


def load_any(path: str, *, model: str | None = None, method: str | None = None, dataset: str | None = None,
             **given: Any) -> tuple[nn.Module, dict[str, Any] | None]:
    """(model, bnnkit checkpoint or None) from a bnnkit or authors' checkpoint.

    A bnnkit checkpoint describes itself (so BiPer's f is the trained one, not a CLI default: quirk
    Q17 is fixed); any of model/method/dataset and the method settings in `given` (the `rebuilds`
    options: BiPer's freq, stage) passed must agree with it. An authors' checkpoint needs model,
    method and dataset; the method turns `given` into its settings (Method.authors_settings)."""
    obj = ck.read_checkpoint(path)
    given = {k: v for k, v in given.items() if v is not None}
    if ck.is_bnnkit(obj):
        ck.check_matches(obj, path, method=method, model=model, dataset=dataset)
        s = obj["spec"]["settings"]
        labels = {o.name: o.label or o.name for o in get_method(obj["spec"]["method"]).options}
        for key, value in given.items():
            if key in s and value != s[key]:
                raise ConfigError(f"--{key} {value} contradicts the checkpoint's trained {labels.get(key, key)} "
                                  f"{s[key]}: drop --{key}")
        return ck.model_from_checkpoint(obj, path), obj
    missing = [f"--{k}" for k, v in (("model", model), ("method", method), ("dataset", dataset)) if v is None]
    if missing:
        raise ConfigError(f"{path} is not a bnnkit checkpoint (an authors' file?): pass {', '.join(missing)} "
                          f"to say what it holds")
    cls = get_method(method)
    own = {o.name for o in cls.options if o.rebuilds}
    foreign = sorted(set(given) - own)
    if foreign:
        raise ConfigError(f"--{foreign[0]} is not a setting of method {method!r}: drop it")
    settings = cls.authors_settings(path, {k: given.get(k) for k in own})
    return load_reference(obj, method, model, dataset=dataset, **settings), None


def evaluate_checkpoint(path: str, opts: dict[str, Any]) -> dict[str, float]:
    """One validation pass of a checkpoint on opts['data_path'] (val split), as the authors' `-e`."""
    model, obj = load_any(path, model=opts.get("model"), method=opts.get("method"), dataset=opts.get("dataset"),
                          **{k: opts.get(k) for k in rebuild_options()})
    spec = model.bnnkit_spec
    base = dict(obj["config"]) if obj else {}
    keep = {k: base[k] for k in ("batch_size_test", "backend", "seed") if k in base}
    raw = {**keep, "method": spec["method"], "model": spec["model"], "dataset": spec["dataset"],
           **{k: v for k, v in opts.items() if k in ("data_path", "batch_size_test", "val_subset", "workers", "backend",
                                                      "device", "cache_dir", "amp") and v is not None}}
    raw.update({o.name: spec["settings"][o.name] for o in get_method(spec["method"]).options
                if o.inherited and o.name in spec["settings"]})
    cfg = resolve(raw)
    d = setup(cfg["device"])
    _, val_loader = load_data(cfg, d, train=False)
    model = model.to(d.device)
    res = evaluate(model, nn.CrossEntropyLoss(), val_loader, method=method_of(model), device=d.device,
                   amp=cfg["amp"], log=None)
    return {**res, "images": val_loader.num_samples * d.world_size}


def rebuild_options() -> dict[str, type]:
    """The options any method needs to rebuild an authors' checkpoint, as flags of eval, qe and export."""
    return {name: owners[0][1].type for name, owners in all_options().items() if any(o.rebuilds for _, o in owners)}
