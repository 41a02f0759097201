"""A split of a dataset as a list of samples (image files, or already-decoded arrays) with labels."""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from ._errors import DataError
from ._images import load_rgb


@dataclass
class Source:
    """One split: labels plus either image paths (decoded on demand) or uint8 NHWC arrays (CIFAR pickles)."""

    name: str
    split: str
    classes: tuple[str, ...]
    labels: np.ndarray  # int64 [N]
    paths: list[str] | None = None
    arrays: np.ndarray | None = None  # uint8 [N, H, W, 3]
    origin: str = ""  # where it was read from, for messages
    _key: str | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.labels)

    def load(self, i: int) -> Image.Image:
        return Image.fromarray(self.arrays[i]) if self.paths is None else load_rgb(self.paths[i])

    def select(self, indices: np.ndarray) -> Source:
        return Source(self.name, self.split, self.classes, self.labels[indices],
                      None if self.paths is None else [self.paths[i] for i in indices],
                      None if self.arrays is None else self.arrays[indices], self.origin)

    def content_key(self) -> str:
        """A hash of what the split holds: file names, sizes and mtimes (or the arrays), and labels.

        Used to key the decoded cache, so that a changed file or label invalidates it without
        reading every image again.
        """
        if self._key is None:
            h = hashlib.sha256(f"{self.name}|{self.split}|{','.join(self.classes)}".encode())
            h.update(self.labels.astype(np.int64).tobytes())
            if self.paths is None:
                h.update(np.ascontiguousarray(self.arrays).tobytes())
            else:
                for p in self.paths:
                    try:
                        st = os.stat(p)
                    except FileNotFoundError:
                        raise DataError(f"image file {p} has disappeared: restore it and rerun") from None
                    h.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
            self._key = h.hexdigest()[:24]
        return self._key


def balanced_subset(labels: np.ndarray, n: int, num_classes: int) -> np.ndarray:
    """Indices of the first n // C samples of each class (the first n % C classes get one more).

    Deterministic and independent of the seed, so a quick run or a test always sees the same images,
    and class-balanced so that accuracy on it is meaningful. Returned in the split's own order.
    """
    if n <= 0:
        raise DataError(f"subset={n} must be a positive number of images (or None for the whole split)")
    per_class = [n // num_classes + (c < n % num_classes) for c in range(num_classes)]
    chosen = []
    for c, k in enumerate(per_class):
        idx = np.flatnonzero(labels == c)
        if len(idx) < k:
            raise DataError(f"subset={n} needs {k} images of class {c} but the split has {len(idx)}: "
                            f"use a smaller subset")
        chosen.append(idx[:k])
    return np.sort(np.concatenate(chosen))
