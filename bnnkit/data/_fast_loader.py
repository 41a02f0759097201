"""The fast backend for small images: the whole split as one uint8 tensor, augmented a batch at a time."""
from __future__ import annotations

from collections.abc import Iterator
from itertools import accumulate

import torch

from ._augment import crop_flip, crop_flip_params
from ._cache import decoded_split
from ._loader import ShardedLoader
from ._normalize import normalize_uint8
from ._order import generator
from ._source import Source


class FastLoader(ShardedLoader):
    """Decoded CIFAR split on `device`, batches cropped/flipped/normalised there with tensor ops.

    Per-image Python work (PIL, ToTensor, collate) dominates torchvision's CIFAR pipeline; here it is
    paid once, when the split is decoded into the cache. Crops and flips come from a generator seeded
    by (seed, epoch, rank, batch index), so any batch can be recomputed alone, bit for bit: resuming
    mid-epoch with `iter_from(k)` costs nothing.
    """

    def __init__(self, source: Source, batch_size: int, *, train: bool, mean: tuple[float, ...],
                 std: tuple[float, ...], cache_dir: str | None = None, threads: int | None = None, **kw):
        super().__init__(source, batch_size, **kw)
        self.train, self.mean, self.std = train, mean, std
        images, labels = decoded_split(source, cache_dir, threads)
        # NCHW once here, so that batches need no permute: uint8 [N, 3, H, W] on the delivery device
        self.images = images.permute(0, 3, 1, 2).contiguous().to(self.device)
        self.labels = labels.to(self.device)

    def batch(self, indices: torch.Tensor, epoch: int, batch_index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch of `indices` exactly as the epoch's `batch_index`-th batch delivers it."""
        indices = indices.to(self.device)
        x = self.images[indices]
        if self.train:
            x = crop_flip(x, *crop_flip_params(len(indices), generator(self.seed, epoch, self.rank, batch_index)))
        return normalize_uint8(x, self.mean, self.std), self.labels[indices]

    def _batches(self, epoch: int, start: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        indices, _, sizes = self._plan(epoch)
        indices = indices.to(self.device)  # one copy per epoch, then slices
        ends = list(accumulate(sizes))
        for b in range(start, len(sizes)):
            yield self.batch(indices[ends[b] - sizes[b]:ends[b]], epoch, b)
