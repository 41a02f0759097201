"""The torch backend: torchvision's per-image transforms in DataLoader workers, reproducibly seeded."""
from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from itertools import accumulate

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, get_worker_info

from ._errors import DataError
from ._images import check_header
from ._loader import ShardedLoader
from ._order import generator, mix, sample_seeds
from ._source import Source


@contextmanager
def seeded_rngs(seed: int):
    """Seed torch's (CPU), numpy's and Python's global generators, which torchvision transforms and
    BiPer's Lighting draw from, for one sample.

    In a DataLoader worker the global streams are ours alone, so they are just reseeded; in the main
    process (workers=0) they are the caller's, so they are restored afterwards. Only the CPU generator
    is seeded: torch.manual_seed would also seed every accelerator, at ~200 us a call.
    """
    own = get_worker_info() is not None
    states = None if own else (torch.get_rng_state(), np.random.get_state(), random.getstate())
    torch.default_generator.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)
    try:
        yield
    finally:
        if states is not None:
            torch.set_rng_state(states[0])
            np.random.set_state(states[1])
            random.setstate(states[2])


class SeededDataset(Dataset):
    """Items are (index, seed): each sample's augmentation is a function of its own seed only, so it
    does not depend on the number of workers or on where an interrupted epoch resumed."""

    def __init__(self, source: Source, transform: Callable):
        self.source, self.transform = source, transform

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, item: tuple[int, int]) -> tuple[torch.Tensor, int]:
        index, seed = item
        img = self.source.load(index)  # raises DataError naming the file if it cannot be decoded
        try:
            with seeded_rngs(seed):
                x = self.transform(img)
        except Exception as e:  # noqa: BLE001 (whatever a transform raises, the user needs the file)
            what = f"image {self.source.paths[index]}" if self.source.paths else f"sample {index} of {self.source.origin}"
            raise DataError(f"{what} could not be transformed ({type(e).__name__}: {e}): replace or delete "
                            f"the file, then rerun") from None
        return x, int(self.source.labels[index])


# Files at most checked up front (their first bytes, ~20 us each): every subset and tiny-imagenet; the
# 1.28 M images of a whole ImageNet split are left to the decode, which names a bad file as well.
HEADER_CHECK_LIMIT = 200_000


def _one_line(exc: DataError) -> DataError:
    """A DataLoader worker's DataError comes back as "Caught DataError in DataLoader worker process N."
    plus the worker's traceback: keep only the original message (the line that names the file)."""
    text = str(exc)
    if not text.startswith("Caught "):
        return exc
    last = text.rstrip().splitlines()[-1]
    return DataError(last.split("DataError: ", 1)[1] if "DataError: " in last else last)


class TorchLoader(ShardedLoader):
    """torchvision transforms per image in a DataLoader, with our own shard/shuffle plan as batch sampler."""

    def __init__(self, source: Source, batch_size: int, *, transform: Callable, workers: int = 2, **kw):
        super().__init__(source, batch_size, **kw)
        if source.paths is not None and len(source.paths) <= HEADER_CHECK_LIMIT:
            for path in source.paths:  # an empty or non-image file fails now, not in a worker mid-epoch
                check_header(path)
        self.dataset = SeededDataset(source, transform)
        self.workers = workers

    def _batches(self, epoch: int, start: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        indices, positions, sizes = self._plan(epoch)
        seeds = sample_seeds(mix(self.seed, epoch, 0xA06), positions)
        pairs = list(zip(indices.tolist(), seeds))
        ends = list(accumulate(sizes))
        batches = [pairs[ends[b] - sizes[b]:ends[b]] for b in range(start, len(sizes))]
        if not batches:
            return
        pin = self.device.type == "cuda"
        # our own generator: DataLoader would otherwise draw its workers' base seed from the caller's RNG
        loader = DataLoader(self.dataset, batch_sampler=batches, num_workers=self.workers, pin_memory=pin,
                            generator=generator(self.seed, epoch, self.rank, 0xDA7A))
        it = iter(loader)
        try:
            for x, y in it:
                yield x.to(self.device, non_blocking=pin), y.to(self.device, non_blocking=pin)
        except DataError as exc:
            raise _one_line(exc) from None
        finally:
            # A worker's DataError keeps this iterator alive in its traceback; shut the workers down now
            # (private API, present since torch 1.x): left to the garbage collector, it stalls ~5 s a worker.
            shutdown = getattr(it, "_shutdown_workers", None)
            if shutdown is not None:
                shutdown()
