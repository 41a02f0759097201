"""build_loader: the one entry point the trainer uses, choosing dataset reader and backend by name."""
from __future__ import annotations

import os

import torch

from ._cifar import cifar_source
from ._errors import DataError
from ._imagenet import imagenet_source, tinyimagenet_source
from ._info import DATASETS
from ._loader import ShardedLoader
from ._source import Source, balanced_subset
from ._transforms import build_transform

BACKENDS = ("auto", "torch", "fast", "dali")
CIFAR = ("cifar10", "cifar100")


def read_source(dataset: str, root: str | os.PathLike, split: str, cache_dir: str | None = None,
                download: bool = False, subset: int | None = None) -> Source:
    """The samples and labels of one split, checked up front (folders, classes), optionally subset."""
    if dataset not in DATASETS:
        raise DataError(f"unknown dataset {dataset!r}: choose one of {', '.join(DATASETS)}")
    if split not in ("train", "val"):
        raise DataError(f"unknown split {split!r}: use 'train' or 'val' (CIFAR's test set is 'val')")
    if dataset in CIFAR:
        source = cifar_source(dataset, os.fspath(root), split, cache_dir, download)
    elif dataset == "imagenet":
        source = imagenet_source(os.fspath(root), split)
    else:
        source = tinyimagenet_source(os.fspath(root), split)
    if subset is not None:
        source = source.select(balanced_subset(source.labels, subset, len(source.classes)))
    return source


def build_loader(dataset: str, root: str | os.PathLike, split: str, batch_size: int, *, train: bool | None = None,
                 backend: str = "auto", workers: int = 2, seed: int = 0, subset: int | None = None,
                 rank: int | None = None, world_size: int | None = None, drop_last: bool = False,
                 lighting: bool = False, device: torch.device | str = "cpu", cache_dir: str | None = None,
                 download: bool = False) -> ShardedLoader:
    """A loader of (images float32 NCHW normalised, labels int64) batches on `device` for one split.

    train (default split == 'train') turns on the published augmentation and per-epoch shuffling.
    backend 'auto' is 'fast' for CIFAR (decoded uint8 tensor, batched augmentation on `device`) and
    'torch' (torchvision per image in DataLoader workers) otherwise; 'dali' needs the dali extra.
    Sample order and augmentation are pure functions of (seed, epoch, rank, world_size): call
    `set_epoch(e)` each epoch and `iter_from(k)` to resume after k batches.
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise DataError(f"batch_size must be a positive int, got {batch_size!r}")
    if backend not in BACKENDS:
        raise DataError(f"unknown backend {backend!r}: choose one of {', '.join(BACKENDS)}")
    if lighting and dataset != "imagenet":
        raise DataError(f"lighting=True is BiPer's ImageNet augmentation, not defined for {dataset!r}: drop the flag")
    if backend == "auto":
        backend = "fast" if dataset in CIFAR else "torch"
    if backend == "fast" and dataset not in CIFAR:
        raise DataError(f"backend='fast' is for small same-size images (CIFAR), not {dataset!r}: use 'torch' or 'dali'")
    source = read_source(dataset, root, split, cache_dir, download, subset)
    info = DATASETS[dataset]
    train = split == "train" if train is None else train
    common = dict(shuffle=train, seed=seed, rank=rank, world_size=world_size, drop_last=drop_last, device=device)
    if backend == "fast":
        from ._fast_loader import FastLoader

        return FastLoader(source, batch_size, train=train, mean=info.mean, std=info.std, cache_dir=cache_dir,
                          threads=max(1, workers), **common)
    if backend == "dali":
        from ._dali_loader import DaliLoader

        return DaliLoader(source, batch_size, train=train, lighting=lighting, mean=info.mean, std=info.std,
                          workers=workers, **common)
    from ._torch_loader import TorchLoader

    return TorchLoader(source, batch_size, transform=build_transform(dataset, train, lighting), workers=workers,
                       **common)
