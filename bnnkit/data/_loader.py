"""What every backend shares: epoch bookkeeping, sharding, lengths and resumable iteration."""
from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.distributed as dist

from ._errors import DataError
from ._order import batch_sizes, shard_order
from ._source import Source


def default_rank_world(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """Explicit values win; else torch.distributed's when it is initialised; else a single process."""
    live = dist.is_available() and dist.is_initialized()
    rank = (dist.get_rank() if live else 0) if rank is None else rank
    world_size = (dist.get_world_size() if live else 1) if world_size is None else world_size
    if not 0 <= rank < world_size:
        raise DataError(f"rank {rank} is outside 0..{world_size - 1}: pass 0 <= rank < world_size")
    return rank, world_size


class ShardedLoader:
    """Base of the backends. Subclasses implement `_batches(epoch, start)` yielding (images, labels).

    `for x, y in loader` runs the current epoch (set by `set_epoch`); `iter_from(k)` runs it from
    batch k on, which is how a resumed run skips the batches it has already trained on.
    """

    def __init__(self, source: Source, batch_size: int, *, shuffle: bool, seed: int, rank: int | None,
                 world_size: int | None, drop_last: bool, device: torch.device | str):
        self.source = source
        self.batch_size = batch_size
        self.shuffle, self.seed, self.drop_last = shuffle, seed, drop_last
        self.rank, self.world_size = default_rank_world(rank, world_size)
        self.device = torch.device(device)
        self.epoch = 0
        self.classes = source.classes

    @property
    def dataset_size(self) -> int:
        return len(self.source)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def _plan(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
        return shard_order(len(self.source), self.batch_size, self.seed, epoch, self.shuffle, self.rank,
                           self.world_size, self.drop_last)

    def _sizes(self) -> list[int]:
        return batch_sizes(len(self.source), self.batch_size, self.rank, self.world_size, self.drop_last)

    @property
    def num_samples(self) -> int:
        """Samples this rank sees per epoch (the same every epoch)."""
        return sum(self._sizes())

    def __len__(self) -> int:
        return len(self._sizes())

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose (deterministically reshuffled) order the next iteration uses."""
        self.epoch = epoch

    def indices_for_epoch(self, epoch: int | None = None) -> list[int]:
        """The sample indices this rank sees in `epoch` (default: the current one), in order."""
        return self._plan(self.epoch if epoch is None else epoch)[0].tolist()

    def iter_from(self, batch_index: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Iterate the current epoch from batch `batch_index` on, exactly as an uninterrupted run would."""
        if not 0 <= batch_index <= len(self):
            raise DataError(f"iter_from({batch_index}) is outside this epoch's 0..{len(self)} batches: "
                            f"pass the number of batches already done this epoch")
        return self._batches(self.epoch, batch_index)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.iter_from(0)

    def _batches(self, epoch: int, start: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        raise NotImplementedError
