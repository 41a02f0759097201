"""Training configuration: the authors' flag names, their per-script defaults, recipes and overrides.

A configuration is a flat dict whose keys are the authors' argparse names (batch_size is `-b`,
batch_size_test is `-bt`, ...) plus a few bnnkit additions (subset, checkpoint_every, amp, ...).
It is resolved in this order: per-script defaults (REFERENCE.md §8) <- recipe YAML <- command line.
A two-stage BiPer recipe holds shared keys plus `stage1:` and `stage2:` sections.
"""
from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError, UnknownNameError


# key -> (type, default, help). Defaults that depend on method and dataset are filled by script_defaults().
KEYS: dict[str, tuple[Any, Any, str]] = {
    "method": (str, "siman", "binarization method (siman, biper, ste, xnor)"),
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
    "freq": (float, 30.0, "BiPer frequency f (stage 2 takes it from the stage-1 checkpoint)"),
    "tau": (float, None, "BiPer regulariser weight (sets tau_min = tau_max)"),
    "tau_min": (float, None, "BiPer tau schedule start"),
    "tau_max": (float, None, "BiPer tau schedule end"),
    "regularize": (bool, None, "add BiPer's regulariser (default: CIFAR only, as the authors)"),
    "sort": (str, "topk", "SiMaN code: 'quick' = sort branch, anything else = median branch"),
    "stage": (int, 1, "BiPer stage (1: sin weights, 2: sign(sin) weights)"),
    "load_ckpt_stage1": (str, None, "stage-1 checkpoint that stage 2 starts from"),
    "use_dali": (bool, False, "DALI data pipeline (ImageNet, GPU)"),
    "backend": (str, "auto", "data backend: auto, torch, fast or dali"),
    "seed": (int, 0, "seed of model init, data order and augmentation"),
    "gpus": (str, None, "GPU ids (CUDA_VISIBLE_DEVICES); several ids launch one process per GPU"),
    "workers": (int, 8, "data loader workers / threads"),
    "print_freq": (int, 100, "batches between progress lines when not on a terminal"),
    "results_dir": (str, "./results", "output root"),
    "save": (str, "", "run folder name under results_dir (default: the recipe's name)"),
    "resume": (Any, False, "continue the run in results_dir/save from its last checkpoint (or from PATH)"),
    "subset": (int, None, "train on a class-balanced subset of this many images"),
    "val_subset": (int, None, "validate on a class-balanced subset of this many images"),
    "checkpoint_every": (int, 0, "also checkpoint every N training batches (0: only at epoch ends)"),
    "amp": (str, None, "autocast dtype: bf16 (CPU/GPU) or fp16 (GPU)"),
    "sync_bn": (bool, False, "SyncBatchNorm across processes (default: each process normalises its own part)"),
    "device": (str, "auto", "auto, cpu or cuda"),
    "deterministic": (bool, False, "torch.use_deterministic_algorithms and single-threaded reproducible kernels"),
    "threads": (int, None, "torch CPU threads per process"),
    "download": (bool, False, "download CIFAR into data_path if it is missing (needs the internet)"),
    "cache_dir": (str, None, "where archives are unpacked and decoded images cached"),
    "augment": (bool, True, "training augmentation and shuffling (False: validation transform, fixed order)"),
    "authors_torch": (str, "1.11", "PyTorch version whose CosineAnnealingLR stepping to reproduce: 1.11 or 2.x"),
    "log_samples": (bool, False, "write the sample indices each process trains on per epoch (samples_rank*.json)"),
    "tensorboard": (bool, True, "write a TensorBoard log"),
}
SECTIONS = ("stage1", "stage2")
NUM_CLASSES = {"cifar10": 10, "cifar100": 100, "tinyimagenet": 200, "imagenet": 1000}


def family_of(dataset: str) -> str:
    return "cifar" if dataset in ("cifar10", "cifar100") else "imagenet"


def script_defaults(method: str, dataset: str) -> dict[str, Any]:
    """The defaults of the authors' script for this method and dataset (REFERENCE.md §8)."""
    fam = family_of(dataset)
    d: dict[str, Any] = {"epochs": 400, "batch_size": 256, "batch_size_test": 128,
                         "weight_decay": 5e-4 if fam == "cifar" else 1e-4,
                         "model": "resnet20_1w1a"}
    if method == "biper":
        d["model"] = "resnet18_1w1a"
        if fam == "cifar":
            d.update(epochs=600, tau=0.001)
        else:
            d.update(epochs=200, batch_size=512, batch_size_test=256, tau_min=0.85, tau_max=0.99)
    return d


def recipe_dirs() -> list[Path]:
    here = Path(__file__).resolve().parents[2] / "recipes"
    return [p for p in (here, Path.cwd() / "recipes") if p.is_dir()]


def list_recipes() -> list[str]:
    names = set()
    for root in recipe_dirs():
        names |= {str(p.relative_to(root).with_suffix("")) for p in root.rglob("*.yaml")}
    return sorted(names)


def find_recipe(name: str) -> Path:
    path = Path(name)
    if path.is_file():
        return path
    for root in recipe_dirs():
        for cand in (root / name, root / f"{name}.yaml"):
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


def check_keys(data: dict[str, Any], where: str) -> None:
    for key, value in data.items():
        if key in SECTIONS:
            if not isinstance(value, dict):
                raise ConfigError(f"{where}: section {key!r} must be a mapping")
            check_keys(value, f"{where}:{key}")
        elif key not in KEYS:
            raise ConfigError(f"{where}: unknown setting {key!r}; valid settings: {', '.join(KEYS)}")


def coerce(key: str, value: Any) -> Any:
    kind = KEYS[key][0]
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


def parse_set(items: list[str]) -> dict[str, Any]:
    """--set KEY=VALUE (VALUE parsed as YAML; KEY may be stage1.KEY / stage2.KEY)."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: write KEY=VALUE")
        key, raw = item.split("=", 1)
        value = yaml.safe_load(raw)
        if "." in key:
            section, sub = key.split(".", 1)
            if section not in SECTIONS:
                raise ConfigError(f"--set {key}: sections are {', '.join(SECTIONS)}")
            out.setdefault(section, {})[sub] = value
        else:
            out[key] = value
    check_keys(out, "--set")
    return out


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in over.items():
        if key in SECTIONS and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def stages_of(raw: dict[str, Any]) -> list[dict[str, Any]]:
    """One explicit (not yet defaulted) config per stage: [cfg] or [stage1 cfg, stage2 cfg]."""
    shared = {k: v for k, v in raw.items() if k not in SECTIONS}
    if not any(s in raw for s in SECTIONS):
        return [shared]
    if not all(s in raw for s in SECTIONS):
        raise ConfigError("a two-stage recipe needs both 'stage1:' and 'stage2:' sections")
    return [merge(shared, {**raw["stage1"], "stage": 1}), merge(shared, {**raw["stage2"], "stage": 2})]


def resolve(explicit: dict[str, Any]) -> dict[str, Any]:
    """Fill defaults into one stage's explicit settings and check them for contradictions."""
    explicit = {k: coerce(k, v) for k, v in explicit.items()}
    method = explicit.get("method") or KEYS["method"][1]
    dataset = explicit.get("dataset") or KEYS["dataset"][1]
    if dataset not in NUM_CLASSES:
        raise UnknownNameError(f"unknown dataset {dataset!r}; valid datasets: {', '.join(NUM_CLASSES)}")
    cfg = {k: v[1] for k, v in KEYS.items()}
    cfg.update(script_defaults(method, dataset))
    cfg.update(explicit)
    cfg["method"], cfg["dataset"] = method, dataset
    cfg["explicit"] = sorted(explicit)
    validate(cfg)
    return cfg


def validate(cfg: dict[str, Any]) -> None:
    from .. import list_methods, list_models

    if cfg["method"] not in list_methods():
        raise UnknownNameError(f"unknown method {cfg['method']!r}; valid methods: {', '.join(list_methods())}")
    if cfg["model"] not in list_models():
        raise UnknownNameError(f"unknown model {cfg['model']!r}; valid models: {', '.join(list_models())}")
    if cfg["lr_type"] not in ("cos", "step", "linear"):
        raise ConfigError(f"--lr_type {cfg['lr_type']!r}: choose cos, step or linear")
    if cfg["lr_type"] == "step" and not cfg["lr_decay_step"]:
        raise ConfigError("--lr_type step needs --lr_decay_step (comma-separated epochs)")
    if cfg["optimizer"] not in ("sgd", "adam"):
        raise ConfigError(f"--optimizer {cfg['optimizer']!r}: choose sgd or adam")
    if cfg["stage"] not in (1, 2):
        raise ConfigError(f"--stage {cfg['stage']}: BiPer stages are 1 and 2")
    if cfg["stage"] == 2 and cfg["method"] != "biper":
        raise ConfigError(f"--stage 2 is BiPer's second stage; method {cfg['method']!r} has one stage")
    if cfg["load_ckpt_stage1"] and cfg["stage"] != 2:
        raise ConfigError("--load_ckpt_stage1 starts BiPer stage 2: add --stage 2 (or drop the flag)")
    if cfg["method"] != "biper":
        extra = [k for k in ("freq", "tau", "tau_min", "tau_max") if k in cfg["explicit"]]
        if extra:
            raise ConfigError(f"--{extra[0]} is a BiPer setting; method {cfg['method']!r} has none: drop it or use --method biper")
    if cfg["tau"] is not None and ("tau_min" in cfg["explicit"] or "tau_max" in cfg["explicit"]) and "tau" in cfg["explicit"]:
        raise ConfigError("--tau sets tau_min = tau_max (CIFAR); give either --tau or --tau_min/--tau_max, not both")
    if cfg["use_dali"]:
        if "backend" in cfg["explicit"] and cfg["backend"] != "dali":
            raise ConfigError(f"--use_dali contradicts --backend {cfg['backend']}: give one of them")
        cfg["backend"] = "dali"
    if cfg["amp"] not in (None, "bf16", "fp16"):
        raise ConfigError(f"--amp {cfg['amp']!r}: choose bf16 or fp16")
    if cfg["device"] not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"--device {cfg['device']!r}: choose auto, cpu or cuda")
    if cfg["authors_torch"] not in ("1.11", "2.x"):
        raise ConfigError(f"--authors_torch {cfg['authors_torch']!r}: choose 1.11 or 2.x")
    for key in ("epochs", "batch_size", "batch_size_test"):
        if cfg[key] < 1:
            raise ConfigError(f"--{key} must be at least 1, not {cfg[key]}")
    if cfg["checkpoint_every"] < 0:
        raise ConfigError("--checkpoint_every must be >= 0 (0 turns it off)")
    if cfg["stage"] == 2 and cfg["epochs"] < 2:
        raise ConfigError("BiPer stage 2 runs epochs 1..E-1 (the authors' offset): give --epochs 2 or more")


def run_dir_of(cfg: dict[str, Any]) -> str:
    return os.path.join(cfg["results_dir"], cfg["save"] or f"{cfg['method']}_{cfg['model']}_{cfg['dataset']}")


def plain(cfg: dict[str, Any]) -> dict[str, Any]:
    """The config as YAML/weights_only-safe plain values."""
    return {k: (v if isinstance(v, (str, int, float, bool, list, type(None))) else str(v)) for k, v in cfg.items()}
