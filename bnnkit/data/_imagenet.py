"""ImageNet (ImageFolder train/ and val/) and tiny-imagenet-200 as the authors' loaders read them."""
from __future__ import annotations

import os

import numpy as np

from ._errors import DataError
from ._folders import list_class_dirs, require_dir, scan_image_folder
from ._images import is_image_file
from ._source import Source

# SiMaN's DALI script reads the training images from ILSVRC2012_img_train (spec Q23): accept both.
_IMAGENET_DIRS = {"train": ("train", "ILSVRC2012_img_train"), "val": ("val",)}


def _split_dir(root: str, names: tuple[str, ...], what: str) -> str:
    for n in names:
        if os.path.isdir(os.path.join(root, n)):
            return os.path.join(root, n)
    raise DataError(f"{what} root {root} has no {' or '.join(n + '/' for n in names)} folder: "
                    f"pass the folder that holds train/ and val/ (ImageFolder layout <split>/<class>/<image>)")


def _train_classes(root: str, split: str) -> tuple[str, ...] | None:
    """Val labels must index the same class list as train; take it from train/ when present."""
    if split == "train":
        return None
    for n in _IMAGENET_DIRS["train"]:
        if os.path.isdir(os.path.join(root, n)):
            return tuple(list_class_dirs(os.path.join(root, n)))
    return None


def imagenet_source(root: str, split: str) -> Source:
    """ImageNet as ImageFolder: classes are the sorted synset folders (the standard 1000-class order)."""
    root = os.fspath(root)
    require_dir(root, "imagenet root", "pass the folder that holds train/ and val/")
    d = _split_dir(root, _IMAGENET_DIRS[split], "imagenet")
    classes, paths, labels = scan_image_folder(d, _train_classes(root, split))
    return Source("imagenet", split, classes, labels, paths=paths, origin=d)


def tinyimagenet_source(root: str, split: str) -> Source:
    """tiny-imagenet-200: ImageFolder on `<root>/tiny-imagenet-200/{train,val}` (the authors' load_data).

    The download's val/ is not in class folders (val/images/ plus val_annotations.txt); an ImageFolder
    would read it as a single class and mislabel every image, so that layout is read from the
    annotations instead, against the class list of train/.
    """
    root = os.fspath(root)
    require_dir(root, "tinyimagenet root", "pass the folder that holds tiny-imagenet-200/")
    if os.path.isdir(os.path.join(root, "tiny-imagenet-200")):
        root = os.path.join(root, "tiny-imagenet-200")
    d = _split_dir(root, (split,), "tinyimagenet")
    ann = os.path.join(d, "val_annotations.txt")
    if split == "val" and os.path.isfile(ann) and os.path.isdir(os.path.join(d, "images")):
        classes = _train_classes(root, split)
        if classes is None:
            raise DataError(f"{ann} needs the class list of {root}/train/: restore train/ beside val/")
        index = {c: i for i, c in enumerate(classes)}
        paths, labels = [], []
        with open(ann) as f:
            for line in f:
                parts = line.split("\t")
                if len(parts) < 2 or not is_image_file(parts[0]):
                    continue
                if parts[1] not in index:
                    raise DataError(f"{ann} names class {parts[1]} absent from train/: fix the annotations or train/")
                paths.append(os.path.join(d, "images", parts[0]))
                labels.append(index[parts[1]])
        if not paths:
            raise DataError(f"{ann} lists no images: restore the file")
        missing = [p for p in paths if not os.path.isfile(p)]
        if missing:
            raise DataError(f"{len(missing)} images listed in {ann} are missing (first: {missing[0]}): restore them")
        return Source("tinyimagenet", split, classes, np.asarray(labels, np.int64), paths=paths, origin=d)
    classes, paths, labels = scan_image_folder(d, _train_classes(root, split))
    return Source("tinyimagenet", split, classes, labels, paths=paths, origin=d)
