"""Sample order, DDP shards and batch boundaries: pure functions of (seed, epoch, rank, world_size).

A run killed mid-epoch and resumed must see the same batches, so nothing here depends on global RNG
state, worker count or wall-clock: every random draw comes from a generator seeded by `mix`.
"""
from __future__ import annotations

import hashlib

import torch


def mix(*values: int) -> int:
    """A stable 63-bit seed from integers (unlike hash(), identical across processes and Python runs)."""
    digest = hashlib.blake2b(",".join(str(int(v)) for v in values).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def generator(*values: int) -> torch.Generator:
    return torch.Generator().manual_seed(mix(*values))


def epoch_order(n: int, seed: int, epoch: int, shuffle: bool) -> torch.Tensor:
    """All n indices in this epoch's order: a permutation from (seed, epoch), or 0..n-1 unshuffled."""
    return torch.randperm(n, generator=generator(seed, epoch, 0x5EED)) if shuffle else torch.arange(n)


def batch_sizes(n: int, batch_size: int, rank: int, world_size: int, drop_last: bool) -> list[int]:
    """Sizes of this rank's batches when the n samples are dealt round-robin to world_size ranks.

    Every rank gets the same number of batches, which DDP needs (a rank with one batch more would wait
    forever in all-reduce). drop_last drops each rank's partial batch. Otherwise the partial batch is
    kept, as the authors do; when a rank's shard is exactly one sample short of another rank's extra
    batch, its last full batch is split in two so that the counts still agree.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    shard = len(range(rank, n, world_size))
    if drop_last:
        return [batch_size] * ((n // world_size) // batch_size)
    num = -(-(-(-n // world_size)) // batch_size)  # ceil(ceil(n / ws) / bs): batches of the largest shard
    sizes = [batch_size] * (shard // batch_size) + ([shard % batch_size] if shard % batch_size else [])
    if len(sizes) < num and sizes and sizes[-1] > 1:
        sizes[-1:] = [sizes[-1] - 1, 1]
    return sizes


def shard_order(n: int, batch_size: int, seed: int, epoch: int, shuffle: bool, rank: int, world_size: int,
                drop_last: bool) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """(indices, global positions, batch sizes) for one rank and epoch.

    Rank r takes positions r, r + ws, r + 2ws, ... of the epoch order, so shards are disjoint and
    together cover every sample once. Positions (index into the epoch order) give every sample a
    unique per-epoch identity that the per-image augmentation is seeded with.
    """
    sizes = batch_sizes(n, batch_size, rank, world_size, drop_last)
    positions = torch.arange(rank, n, world_size)[: sum(sizes)]
    return epoch_order(n, seed, epoch, shuffle)[positions], positions, sizes


def sample_seeds(base: int, positions: torch.Tensor) -> list[int]:
    """One 63-bit seed per epoch position (splitmix64 of base + position), vectorised for 1.28M samples."""
    import numpy as np

    with np.errstate(over="ignore"):
        z = np.uint64(base) + positions.numpy().astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(1)).astype(np.int64).tolist()
