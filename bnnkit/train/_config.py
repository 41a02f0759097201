"""Training configuration: the authors' flag names, their per-script defaults, recipes and overrides.

A configuration is a flat dict whose keys are the authors' argparse names (batch_size is `-b`,
batch_size_test is `-bt`, ...) plus a few bnnkit additions (subset, checkpoint_every, amp, ...)
and the options each method declares (bnnkit.methods.Option: BiPer's freq and tau, SiMaN's sort).
It is resolved in this order: the trainer's defaults <- the method's per-script defaults
(REFERENCE.md §8) <- recipe YAML <- command line. A multi-stage recipe holds shared keys plus a
`stages:` list, each stage a mapping of its own overrides with an optional `name` (default
stageN) and `start_from` (the previous stage's `best` (default) or `last`, or a path).
"""
from __future__ import annotations

import copy
import math
import os
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError, UnknownNameError
from ..methods import DEFAULT_METHOD, Method, all_aliases, all_options, get_method, list_methods
from ..models import list_models


# The trainer's keys: key -> (type, default, help). Methods add their own (method_keys()); defaults
# that depend on method and dataset are filled by script_defaults().
TRAINER_KEYS: dict[str, tuple[Any, Any, str]] = {
    "method": (str, DEFAULT_METHOD, "binarization method (bnnkit.list_methods())"),
    "model": (str, None, "model name (-a)"),
    "dataset": (str, "cifar10", "cifar10, cifar100, tinyimagenet or imagenet"),
    "data_path": (str, None, "dataset root (a folder, or CIFAR's .tar.gz)"),
    "epochs": (int, None, "number of epochs E"),
    "lr": (float, 0.1, "base learning rate"),
    "batch_size": (int, None, "global training batch (-b); split across processes"),
    "batch_size_test": (int, None, "global validation batch (-bt)"),
    "lr_type": (str, "cos", "cos, step or linear"),
    "lr_decay_step": (list, None, "milestones for --lr_type step"),
    "warm_up": (bool, False, "5-epoch linear warm-up"),
    "weight_decay": (float, None, "L2 weight decay of the decayed parameter group"),
    "momentum": (float, 0.9, "SGD momentum"),
    "optimizer": (str, "sgd", "sgd or adam"),
    "loss": (str, "ce", "training loss: ce (cross-entropy), kd (distillation from --teacher only) or ce+kd"),
    "teacher": (str, None, "distillation teacher: a torchvision model name (resnet34) or a bnnkit checkpoint path"),
    "teacher_weights": (str, None, "the torchvision teacher's weights file (default: torchvision's pretrained "
                        "weights, from its cache or downloaded)"),
    "start_from": (str, None, "checkpoint this stage starts from (a later stage of a recipe: the previous stage's best)"),
    "use_dali": (bool, False, "DALI data pipeline (ImageNet, GPU)"),
    "backend": (str, "auto", "data backend: auto, torch, fast or dali"),
    "seed": (int, 0, "seed of model init, data order and augmentation"),
    "gpus": (str, None, "GPU ids (CUDA_VISIBLE_DEVICES); several ids launch one process per GPU"),
    "workers": (int, 8, "data loader workers / threads"),
    "print_freq": (int, 100, "batches between progress lines when not on a terminal"),
    "results_dir": (str, "./results", "output root"),
    "save": (str, "", "run folder name under results_dir (default: the recipe's name)"),
    "resume": (Any, False, "continue the run in results_dir/save from its last checkpoint (or from PATH)"),
    "allow_changed": (bool, False, "--resume even where a setting that alters the run changed (recorded in log.txt)"),
    "subset": (int, None, "train on a class-balanced subset of this many images"),
    "val_subset": (int, None, "validate on a class-balanced subset of this many images"),
    "checkpoint_every": (int, 0, "also checkpoint every N training batches (0: only at epoch ends)"),
    "checkpoint_minutes": (float, 10.0, "also checkpoint mid-epoch once this many minutes passed since the last "
                           "checkpoint (0: off)"),
    "amp": (str, None, "autocast dtype: bf16 (CPU/GPU) or fp16 (GPU)"),
    "sync_bn": (bool, False, "SyncBatchNorm across processes (default: each process normalises its own part)"),
    "device": (str, "auto", "auto, cpu or cuda"),
    "deterministic": (bool, False, "torch.use_deterministic_algorithms and single-threaded reproducible kernels"),
    "threads": (int, None, "torch CPU threads per process"),
    "download": (bool, False, "download CIFAR into data_path if it is missing (needs the internet)"),
    "cache_dir": (str, None, "where archives are unpacked and decoded images cached"),
    "augment": (bool, True, "training augmentation and shuffling (False: validation transform, fixed order)"),
    "authors_torch": (str, "1.11", "PyTorch version whose CosineAnnealingLR stepping to reproduce: 1.1 (closed form), 1.11 or 2.x"),
    "log_samples": (bool, False, "write the sample indices each process trains on per epoch (samples_rank*.json)"),
    "tensorboard": (bool, True, "write a TensorBoard log"),
    "figures": (bool, True, "redraw the run's figures (figures/*.png) after each epoch"),
}
NUM_CLASSES = {"cifar10": 10, "cifar100": 100, "tinyimagenet": 200, "imagenet": 1000}
STAGE_KEYS = ("name",)  # a stage's own keys besides settings


def method_keys() -> dict[str, tuple[Any, Any, str]]:
    """The options of every registered method as config keys (help texts joined where methods share a name)."""
    out = {}
    for name, owners in all_options().items():
        first = owners[0][1]
        text = "; ".join(dict.fromkeys(o.help for _, o in owners))
        out[name] = (first.type, first.default, text)
    return out


def all_keys() -> dict[str, tuple[Any, Any, str]]:
    return {**TRAINER_KEYS, **method_keys()}


def family_of(dataset: str) -> str:
    return "cifar" if dataset in ("cifar10", "cifar100") else "imagenet"


def script_defaults(method: str, dataset: str) -> dict[str, Any]:
    """The defaults of the authors' script for this method and dataset (REFERENCE.md §8)."""
    fam = family_of(dataset)
    cls = get_method(method)
    d: dict[str, Any] = {"epochs": 400, "batch_size": 256, "batch_size_test": 128,
                         "weight_decay": 5e-4 if fam == "cifar" else 1e-4, "model": "resnet20_1w1a"}
    d.update({o.name: o.default for o in cls.options})
    d.update(cls.script_defaults(fam))
    return d


def recipe_dirs() -> list[Path]:
    here = Path(__file__).resolve().parents[2] / "recipes"
    return [p for p in (here, Path.cwd() / "recipes") if p.is_dir()]


def list_recipes() -> list[str]:
    names = set()
    for root in recipe_dirs():
        # compare/ holds `bnnkit compare` specs, not training recipes
        names |= {str(p.relative_to(root).with_suffix("")) for p in root.rglob("*.yaml")
                  if p.relative_to(root).parts[0] != "compare"}
    return sorted(names)


def find_recipe(name: str) -> Path:
    path = Path(name)
    if path.is_file():
        return path
    for root in recipe_dirs():
        # a name (cifar10/siman_resnet20), or a path from the repository's root (recipes/...)
        for cand in (root / name, root / f"{name}.yaml", root.parent / name):
            if cand.is_file():
                return cand
        hits = sorted(root.rglob(f"{Path(name).stem}.yaml"))
        if len(hits) == 1 and not path.suffix:
            return hits[0]
    raise UnknownNameError(f"unknown recipe {name!r}; valid recipes: {', '.join(list_recipes()) or 'none found'}")


def load_recipe(name: str) -> dict[str, Any]:
    path = find_recipe(name)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"recipe {path} is not valid YAML ({str(exc).splitlines()[0]}): fix the file") from None
    if not isinstance(data, dict):
        raise ConfigError(f"recipe {path} must be a mapping of settings: fix the file")
    check_keys(data, str(path))
    data.setdefault("save", path.stem)
    return data


def canonical(key: str) -> str:
    """A config key from a recipe or flag name: the authors' aliases (load_ckpt_stage1) mapped to ours."""
    return all_aliases().get(key, key)


def check_keys(data: dict[str, Any], where: str) -> None:
    keys = all_keys()
    for key, value in list(data.items()):
        if key == "stages":
            if not isinstance(value, list) or not value or not all(isinstance(v, dict) for v in value):
                raise ConfigError(f"{where}: 'stages' must be a non-empty list of mappings (one per stage)")
            for i, stage in enumerate(value):
                check_keys(stage, f"{where}:stages[{i}]")
        elif key in STAGE_KEYS and where.rsplit(":", 1)[-1].startswith("stages["):
            continue
        elif canonical(key) not in keys:
            raise ConfigError(f"{where}: unknown setting {key!r}; valid settings: {', '.join(keys)}")


def coerce(key: str, value: Any) -> Any:
    kind = all_keys()[key][0]
    if value is None or kind is Any:
        return value
    if kind is bool and isinstance(value, str):
        if value.lower() in ("1", "true", "yes", "on"):
            return True
        if value.lower() in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{key} must be true or false, not {value!r}")
    if kind is list:
        return [int(v) for v in (value.split(",") if isinstance(value, str) else value)]
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{key} must be a {kind.__name__}, not {value!r}") from None


def stage_names(raw: dict[str, Any]) -> list[str]:
    return [str(s.get("name") or f"stage{i + 1}") for i, s in enumerate(raw.get("stages") or [])]


def parse_set(items: list[str], names: list[str] = ()) -> dict[str, Any]:
    """--set KEY=VALUE (VALUE parsed as YAML; KEY may be STAGE.KEY for a stage named STAGE of a
    multi-stage recipe: stage1.KEY, stage2.KEY, or the stage's own name)."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: write KEY=VALUE")
        key, raw = item.split("=", 1)
        value = yaml.safe_load(raw)
        if "." in key:
            section, sub = key.split(".", 1)
            if section not in names:
                raise ConfigError(f"--set {key}: this recipe's stages are {', '.join(names) or 'none (it has one stage)'}")
            out.setdefault("stages", {}).setdefault(section, {})[sub] = value
        else:
            out[key] = value
    check_keys({k: v for k, v in out.items() if k != "stages"}, "--set")
    for section, values in out.get("stages", {}).items():
        check_keys(values, f"--set {section}")
    return out


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """`over` on top of `base`; a mapping under `stages` (stage name -> overrides, as parse_set
    and the command line give) updates the named stages of `base`'s list."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        if key == "stages" and isinstance(value, dict) and isinstance(out.get("stages"), list):
            names = stage_names(out)
            for name, values in value.items():
                out["stages"][names.index(name)].update(copy.deepcopy(values))
        else:
            out[key] = copy.deepcopy(value)
    return out


def stages_of(raw: dict[str, Any]) -> list[dict[str, Any]]:
    """One explicit (not yet defaulted) config per stage: the shared keys with each stage's own on top."""
    shared = {k: v for k, v in raw.items() if k != "stages"}
    if not raw.get("stages"):
        return [shared]
    return [merge(shared, {k: v for k, v in stage.items() if k != "name"}) for stage in raw["stages"]]


def resolve(explicit: dict[str, Any]) -> dict[str, Any]:
    """Fill defaults into one stage's explicit settings and check them for contradictions."""
    keys = all_keys()
    unknown = [k for k in explicit if canonical(k) not in keys]
    if unknown:
        raise ConfigError(f"unknown setting {unknown[0]!r}; valid settings: {', '.join(keys)}")
    method = explicit.get("method") or DEFAULT_METHOD
    dataset = explicit.get("dataset") or TRAINER_KEYS["dataset"][1]
    if method not in list_methods():
        raise UnknownNameError(f"unknown method {method!r}; valid methods: {', '.join(list_methods())}")
    if dataset not in NUM_CLASSES:
        raise UnknownNameError(f"unknown dataset {dataset!r}; valid datasets: {', '.join(NUM_CLASSES)}")
    cls = get_method(method)
    _check_method_keys(cls, explicit)
    explicit = {canonical(k): coerce(canonical(k), v) for k, v in explicit.items()}
    cfg = {k: v[1] for k, v in TRAINER_KEYS.items()}
    cfg.update(script_defaults(method, dataset))
    cfg.update(explicit)
    cfg["method"], cfg["dataset"] = method, dataset
    cfg["explicit"] = sorted(explicit)
    validate(cfg)
    cls.validate_config(cfg)
    return cfg


def _check_method_keys(cls: type[Method], explicit: dict[str, Any]) -> None:
    """An option of another method, or an authors' alias of another method, is an error naming its owners."""
    own = {o.name for o in cls.options}
    for key, owners in all_options().items():
        if key in explicit and key not in own:
            names = " or ".join(dict.fromkeys(c.display() for c, _ in owners))
            raise ConfigError(f"--{key} is a {names} setting; method {cls.name!r} has none: drop it or use "
                              f"--method {owners[0][0].name}")
    for alias, key in all_aliases().items():
        if alias in explicit and alias not in cls.aliases:
            raise ConfigError(f"--{alias} is the authors' name of --{key} in another method; method "
                              f"{cls.name!r} does not take it: use --{key}")


def validate(cfg: dict[str, Any]) -> None:
    """The trainer's own checks (each method adds its own: Method.validate_config)."""
    if cfg["model"] not in list_models():
        raise UnknownNameError(f"unknown model {cfg['model']!r}; valid models: {', '.join(list_models())}")
    if cfg["lr_type"] not in ("cos", "step", "linear"):
        raise ConfigError(f"--lr_type {cfg['lr_type']!r}: choose cos, step or linear")
    if cfg["lr_type"] == "step" and not cfg["lr_decay_step"]:
        raise ConfigError("--lr_type step needs --lr_decay_step (comma-separated epochs)")
    if cfg["optimizer"] not in ("sgd", "adam"):
        raise ConfigError(f"--optimizer {cfg['optimizer']!r}: choose sgd or adam")
    if cfg["loss"] not in ("ce", "kd", "ce+kd"):
        raise ConfigError(f"--loss {cfg['loss']!r}: choose ce, kd or ce+kd")
    if cfg["loss"] != "ce" and not cfg["teacher"]:
        raise ConfigError(f"--loss {cfg['loss']} distills from a teacher: pass --teacher NAME or PATH (or --loss ce)")
    if cfg["teacher_weights"] and not os.path.isfile(cfg["teacher_weights"]):
        raise ConfigError(f"--teacher_weights {cfg['teacher_weights']}: there is no such file; check the path")
    if cfg["use_dali"]:
        if "backend" in cfg["explicit"] and cfg["backend"] != "dali":
            raise ConfigError(f"--use_dali contradicts --backend {cfg['backend']}: give one of them")
        cfg["backend"] = "dali"
    if cfg["amp"] not in (None, "bf16", "fp16"):
        raise ConfigError(f"--amp {cfg['amp']!r}: choose bf16 or fp16")
    if cfg["device"] not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"--device {cfg['device']!r}: choose auto, cpu or cuda")
    if cfg["authors_torch"] not in ("1.1", "1.11", "2.x"):
        raise ConfigError(f"--authors_torch {cfg['authors_torch']!r}: choose 1.1, 1.11 or 2.x")
    for key in ("epochs", "batch_size", "batch_size_test"):
        if cfg[key] < 1:
            raise ConfigError(f"--{key} must be at least 1, not {cfg[key]}")
    for key, low, high in (("lr", 0.0, None), ("weight_decay", 0.0, None), ("momentum", 0.0, 1.0)):
        v = cfg[key]
        if not (math.isfinite(v) and v >= low and (high is None or v < high)):
            span = f"in [{low:g}, {high:g})" if high is not None else f"a finite number >= {low:g}"
            raise ConfigError(f"--{key} must be {span}, not {v}")
    for key, low in (("threads", 1), ("workers", 0), ("subset", 1), ("val_subset", 1), ("print_freq", 1), ("seed", 0)):
        if cfg[key] is not None and cfg[key] < low:
            raise ConfigError(f"--{key} must be at least {low}, not {cfg[key]}")
    if cfg["checkpoint_every"] < 0:
        raise ConfigError("--checkpoint_every must be >= 0 (0 turns it off)")
    if not (math.isfinite(cfg["checkpoint_minutes"]) and cfg["checkpoint_minutes"] >= 0):
        raise ConfigError(f"--checkpoint_minutes must be a finite number >= 0 (0 turns it off), "
                          f"not {cfg['checkpoint_minutes']}")


def method_class(cfg: dict[str, Any]) -> type[Method]:
    return get_method(cfg["method"])


def run_dir_of(cfg: dict[str, Any]) -> str:
    return os.path.join(cfg["results_dir"], cfg["save"] or f"{cfg['method']}_{cfg['model']}_{cfg['dataset']}")


def plain(cfg: dict[str, Any]) -> dict[str, Any]:
    """The config as YAML/weights_only-safe plain values."""
    return {k: (v if isinstance(v, (str, int, float, bool, list, type(None))) else str(v)) for k, v in cfg.items()}
