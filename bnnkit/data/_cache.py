"""The on-disk cache: unpacked archives and decoded uint8 splits, keyed by content, written atomically."""
from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from tqdm import tqdm

from ._errors import DataError
from ._source import Source


def cache_root(cache_dir: str | os.PathLike | None = None) -> str:
    """`cache_dir`, else $BNNKIT_CACHE, else ~/.cache/bnnkit."""
    root = cache_dir or os.environ.get("BNNKIT_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "bnnkit")
    os.makedirs(root, exist_ok=True)
    return str(root)


def file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def unpack_archive(path: str, cache_dir: str | None = None) -> str:
    """Unpack a .tar.gz once into the cache, under the archive's sha256, and return that folder.

    Unpacking goes to a temporary sibling folder that is renamed into place, so an interrupted unpack
    never leaves a half-filled folder that later runs would trust.
    """
    final = os.path.join(cache_root(cache_dir), "archives", file_sha256(path)[:16])
    if os.path.isdir(final):
        return final
    os.makedirs(os.path.dirname(final), exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".unpack-", dir=os.path.dirname(final))
    try:
        try:
            with tarfile.open(path) as tar:
                tar.extractall(tmp, filter="data")
        except (tarfile.TarError, OSError, EOFError) as e:
            raise DataError(f"cannot unpack {path} ({' '.join(str(e).split())}): check the archive's sha256, or unpack it yourself "
                            f"and pass the folder") from None
        try:
            os.rename(tmp, final)
        except OSError:  # another process (a DDP rank) finished first; its copy is as good as ours
            if not os.path.isdir(final):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _decode_all(source: Source, threads: int) -> np.ndarray:
    """Decode every image of `source` into one uint8 NHWC array, in parallel threads (PIL frees the GIL
    while decoding), with a progress bar since 60,000 JPEGs take a while on two cores."""
    first = np.asarray(source.load(0))
    out = np.empty((len(source),) + first.shape, dtype=np.uint8)

    def put(i: int) -> None:
        a = np.asarray(source.load(i))
        if a.shape != first.shape:
            raise DataError(f"image {source.paths[i]} is {a.shape[1]}x{a.shape[0]} but the split's images are "
                            f"{first.shape[1]}x{first.shape[0]}: the fast backend needs one size; use backend='torch'")
        out[i] = a

    with ThreadPoolExecutor(max(1, threads)) as pool:
        list(tqdm(pool.map(put, range(len(source)), chunksize=256), total=len(source), unit="img",
                  desc=f"decoding {source.name} {source.split}", disable=len(source) < 5000, leave=False))
    return out


def decoded_split(source: Source, cache_dir: str | None = None, threads: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(images uint8 [N,H,W,3], labels int64 [N]) for a split, decoded once and cached on disk.

    The file name carries the content key (names, sizes and mtimes of the files and the labels), so a
    changed source gets a new cache entry instead of stale pixels. Sources that are arrays already
    (CIFAR pickles) skip the cache.
    """
    labels = torch.from_numpy(source.labels.astype(np.int64))
    if source.paths is None:
        return torch.from_numpy(np.ascontiguousarray(source.arrays)), labels
    folder = os.path.join(cache_root(cache_dir), "decoded")
    path = os.path.join(folder, f"{source.name}-{source.split}-{len(source)}-{source.content_key()}.pt")
    if os.path.exists(path):
        try:
            blob = torch.load(path, weights_only=True)
            if torch.equal(blob["labels"], labels):
                return blob["images"], labels
        except Exception:  # a damaged cache file is rebuilt, never trusted
            pass
    images = torch.from_numpy(_decode_all(source, threads or os.cpu_count() or 1))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".decoded-", suffix=".pt", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save({"images": images, "labels": labels}, f)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return images, labels
