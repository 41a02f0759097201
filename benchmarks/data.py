"""Images per second of the CIFAR-10 training pipelines, measured in one run on this machine.

    PYTHONPATH=. python benchmarks/data.py [--root PATH] [--subset 10000] [--batch 256] [--rounds 3] [--threads N]

Compares torchvision's per-image pipeline in a DataLoader (the authors' loader: ImageFolder +
RandomCrop/flip/ToTensor/Normalize, 2 workers), bnnkit's torch backend (the same with per-sample
seeding), the fast backend (decoded uint8 tensor + batched augmentation) and DALI CPU-only if
installed. Decoding into the cache happens before timing. Backends run interleaved, `rounds` times,
each round one full epoch after a warm-up batch; the best round is reported.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Subset
from torchvision import datasets

from bnnkit.data import build_loader, build_transform, read_source

DEFAULT_ROOT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar10-jpeg.tar.gz"


def torchvision_loader(folder: str, indices: list[int], batch: int, workers: int) -> DataLoader:
    ds = datasets.ImageFolder(folder, transform=build_transform("cifar10", train=True))
    return DataLoader(Subset(ds, indices), batch_size=batch, shuffle=True, num_workers=workers)


def epoch_rate(loader, epoch: int) -> float:
    if hasattr(loader, "set_epoch"):
        loader.set_epoch(epoch)
    n, start = 0, None
    for i, (x, y) in enumerate(loader):
        if i == 0:  # warm-up: worker start-up and first-batch costs are not throughput
            start = time.perf_counter()
            continue
        n += len(y)
    return n / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default=str(DEFAULT_ROOT), help="CIFAR-10 folder or .tar.gz")
    p.add_argument("--subset", type=int, default=10_000)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads of this process "
                   "(the fast path's ops; default torch's). On a shared, oversubscribed machine 1 is faster.")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    kw = dict(subset=args.subset, workers=args.workers, cache_dir=args.cache_dir, seed=0)
    loaders = {"fast": build_loader("cifar10", args.root, "train", args.batch, backend="fast", **kw),
               "bnnkit torch": build_loader("cifar10", args.root, "train", args.batch, backend="torch", **kw)}
    if importlib.util.find_spec("nvidia") and importlib.util.find_spec("nvidia.dali"):
        loaders["DALI CPU"] = build_loader("cifar10", args.root, "train", args.batch, backend="dali", **kw)
    src = loaders["fast"].source
    folder = os.path.dirname(os.path.dirname(src.paths[0]))
    full = read_source("cifar10", args.root, "train", cache_dir=args.cache_dir)
    where = {path: i for i, path in enumerate(sorted(full.paths, key=lambda q: (q.split("/")[-2], q)))}
    loaders = {"torchvision": torchvision_loader(folder, [where[q] for q in src.paths], args.batch, args.workers), **loaders}

    rates: dict[str, list[float]] = {k: [] for k in loaders}
    for r in range(args.rounds):
        for name, loader in loaders.items():
            rates[name].append(epoch_rate(loader, r))
    print(f"CIFAR-10 train, {len(src)} images, batch {args.batch}, {args.workers} workers/threads, "
          f"{torch.get_num_threads()} torch threads, {os.cpu_count()} cores, load average "
          f"{os.getloadavg()[0]:.1f}; best of {args.rounds} epochs")
    base = max(rates["torchvision"])
    for name, rs in rates.items():
        print(f"{name:>14}: {max(rs):9.0f} img/s  ({max(rs) / base:5.1f}x torchvision)  rounds: "
              + ", ".join(f"{v:.0f}" for v in rs))


if __name__ == "__main__":
    main()
