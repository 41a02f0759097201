"""Scanning an ImageFolder split (`<split>/<class>/**/<image>`) with strict checks on its class folders."""
from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from ._errors import DataError
from ._images import is_image_file


def require_dir(path: str, what: str, fix: str) -> None:
    if not os.path.isdir(path):
        raise DataError(f"{what} {path} does not exist: {fix}")


def list_class_dirs(split_dir: str) -> list[str]:
    return sorted(e.name for e in os.scandir(split_dir) if e.is_dir() and not e.name.startswith("."))


def _images_under(folder: str) -> list[str]:
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames.sort()
        found += [os.path.join(dirpath, f) for f in sorted(filenames) if is_image_file(f)]
    return found


def scan_image_folder(split_dir: str, classes: Sequence[str] | None = None) -> tuple[tuple[str, ...], list[str], np.ndarray]:
    """Return (classes, paths, labels) for an ImageFolder split.

    With `classes` given, the class folders must be exactly those and label i is classes[i]: a missing
    or extra folder would otherwise shift every later label silently, as ImageFolder does. Without it,
    the sorted folder names are the classes (ImageFolder's rule). An empty class folder is an error.
    """
    require_dir(split_dir, "split folder", "pass the dataset root that holds it")
    found = list_class_dirs(split_dir)
    if classes is None:
        classes = tuple(found)
        if not classes:
            raise DataError(f"no class folders in {split_dir}: expected {split_dir}/<class>/<image files>")
    else:
        classes = tuple(classes)
        missing, extra = sorted(set(classes) - set(found)), sorted(set(found) - set(classes))
        if missing or extra:
            raise DataError(f"class folders of {split_dir} do not match the expected {len(classes)} classes "
                            f"(missing: {missing or 'none'}; unexpected: {extra or 'none'}): "
                            f"rename, add or remove those folders")
    paths, labels = [], []
    for label, name in enumerate(classes):
        files = _images_under(os.path.join(split_dir, name))
        if not files:
            raise DataError(f"class folder {os.path.join(split_dir, name)} holds no images: "
                            f"add its images or remove the folder")
        paths += files
        labels += [label] * len(files)
    return classes, paths, np.asarray(labels, dtype=np.int64)
