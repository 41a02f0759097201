"""CIFAR-10/100 from any of the layouts users have: torchvision's pickles, an ImageFolder, or a .tar.gz."""
from __future__ import annotations

import os

import numpy as np

from ._cache import unpack_archive
from ._errors import DataError
from ._folders import scan_image_folder
from ._info import DATASETS
from ._pickle import ForbiddenPickleError, load_data_pickle
from ._source import Source

# torchvision's folder name, the files of each split, and the label key in each pickle.
_PICKLES = {
    "cifar10": ("cifar-10-batches-py", {"train": [f"data_batch_{i}" for i in range(1, 6)], "val": ["test_batch"]},
                "labels", "batches.meta", "label_names"),
    "cifar100": ("cifar-100-python", {"train": ["train"], "val": ["test"]}, "fine_labels", "meta", "fine_label_names"),
}
_SPLIT_DIRS = {"train": ("train",), "val": ("test", "val")}


def _read_pickles(name: str, folder: str, split: str) -> Source:
    _, files, label_key, meta_file, meta_key = _PICKLES[name]
    classes = DATASETS[name].classes
    meta = os.path.join(folder, meta_file)
    if os.path.exists(meta):
        try:
            with open(meta, "rb") as f:
                names = tuple(load_data_pickle(f)[meta_key])
        except ForbiddenPickleError as e:
            raise DataError(f"{meta} is not a genuine {name} file ({e}, which loading data never should): "
                            f"nothing was run; re-download {name}") from None
        except Exception as e:
            raise DataError(f"cannot read {meta} ({type(e).__name__}: {e}): re-download {name}") from None
        if names != classes:
            raise DataError(f"{meta} lists classes {names[:4]}... but {name} has {classes[:4]}...: "
                            f"point root at a genuine {name} download")
    data, labels = [], []
    for fname in files[split]:
        path = os.path.join(folder, fname)
        try:
            with open(path, "rb") as f:
                batch = load_data_pickle(f)
            data.append(np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            labels += list(batch[label_key])
        except ForbiddenPickleError as e:
            raise DataError(f"{path} is not a genuine {name} file ({e}, which loading data never should): "
                            f"nothing was run; re-download {name}") from None
        except FileNotFoundError:
            raise DataError(f"{path} is missing: re-download {name} (download=True) or restore the file") from None
        except Exception as e:
            raise DataError(f"cannot read {path} ({type(e).__name__}: {e}): re-download {name}") from None
    labels = np.asarray(labels, dtype=np.int64)
    if labels.min() < 0 or labels.max() >= len(classes):
        raise DataError(f"labels in {folder} fall outside 0..{len(classes) - 1}: re-download {name}")
    arrays = np.ascontiguousarray(np.concatenate(data).transpose(0, 2, 3, 1))  # NHWC, as PIL sees it
    return Source(name, split, classes, labels, arrays=arrays, origin=folder)


def _download(name: str, root: str) -> None:
    """Fetch torchvision's format into `root` (needs the internet; never used by tests)."""
    import torchvision.datasets as tvd

    cls = tvd.CIFAR10 if name == "cifar10" else tvd.CIFAR100
    for train in (True, False):
        cls(root, train=train, download=True)


def cifar_source(name: str, root: str, split: str, cache_dir: str | None = None, download: bool = False,
                 _depth: int = 0) -> Source:
    """Find which layout `root` holds and read `split` ('train' or 'val' = CIFAR's test set) from it.

    Labels are always CIFAR's own (torchvision's CIFAR10.classes order), never the order of folders
    on disk, and any missing or unexpected class folder is an error.
    """
    root = os.fspath(root)
    pickle_dir = _PICKLES[name][0]
    if not os.path.exists(root):
        if not download:
            raise DataError(f"{name} root {root} does not exist: pass the folder (or .tar.gz) holding {name}, "
                            f"or download=True to fetch torchvision's copy there")
        _download(name, root)
    if os.path.isfile(root):
        if root.endswith((".tar.gz", ".tgz", ".tar")):
            return cifar_source(name, unpack_archive(root, cache_dir), split, cache_dir, False, _depth)
        raise DataError(f"{root} is a file but not a .tar.gz: pass the {name} folder or its archive")
    for folder in (os.path.join(root, pickle_dir), root):
        if os.path.basename(os.path.normpath(folder)) == pickle_dir and os.path.isdir(folder):
            return _read_pickles(name, folder, split)
    subdirs = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    if "train" in subdirs or "test" in subdirs or "val" in subdirs:
        for d in _SPLIT_DIRS[split]:
            if d in subdirs:
                classes, paths, labels = scan_image_folder(os.path.join(root, d), DATASETS[name].classes)
                return Source(name, split, classes, labels, paths=paths, origin=os.path.join(root, d))
        raise DataError(f"{root} has no {' or '.join(_SPLIT_DIRS[split])}/ folder for the {split} split: "
                        f"add it (layout <root>/train/<class>/*, <root>/test/<class>/*)")
    if len(subdirs) == 1 and _depth == 0:  # e.g. the tarball's single top folder cifar10-jpeg/
        return cifar_source(name, os.path.join(root, subdirs[0]), split, cache_dir, False, 1)
    if download:
        _download(name, root)
        return _read_pickles(name, os.path.join(root, pickle_dir), split)
    raise DataError(f"{root} holds no {name} data: expected {pickle_dir}/ (torchvision) or train/<class>/ and "
                    f"test/<class>/ image folders; pass the right root or download=True")
