"""load_data: the training and validation loaders of one process, from bnnkit.data."""
from __future__ import annotations

from typing import Any

from ..methods import get_method
from ._config import ConfigError
from ._distributed import Dist


def per_process(batch: int, world: int, what: str) -> int:
    if batch % world:
        raise ConfigError(f"{what} {batch} does not split evenly over {world} processes: "
                          f"use a multiple of {world} (it is the global batch, as the authors' DataParallel)")
    return batch // world


def load_data(cfg: dict[str, Any], d: Dist, *, train: bool = True) -> tuple[Any, Any]:
    """(train loader or None, val loader) for this process: its shard of each epoch, global batch / processes."""
    from ..data import build_loader

    common = dict(backend=cfg["backend"], workers=cfg["workers"], seed=cfg["seed"], rank=d.rank,
                  world_size=d.world_size, device=d.device, cache_dir=cfg["cache_dir"],
                  download=cfg["download"])
    train_loader = None
    if train:
        extra = get_method(cfg["method"]).augmentation(cfg["dataset"], cfg["backend"])
        train_loader = build_loader(cfg["dataset"], cfg["data_path"], "train",
                                    per_process(cfg["batch_size"], d.world_size, "-b/--batch_size"),
                                    train=cfg["augment"], subset=cfg["subset"], **extra, **common)
    val_loader = build_loader(cfg["dataset"], cfg["data_path"], "val",
                              per_process(cfg["batch_size_test"], d.world_size, "-bt/--batch_size_test"),
                              train=False, subset=cfg["val_subset"], **common)
    return train_loader, val_loader
