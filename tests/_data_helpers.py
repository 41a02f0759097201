"""Small image folders that the data tests build themselves (ImageNet layout, bad files, pickles)."""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
from PIL import Image


def write_image(path: Path, size=(40, 30), mode: str = "RGB", fmt: str = "JPEG", seed: int = 0) -> Path:
    """A random image of `size` (w, h) in `mode`, saved as `fmt` whatever the file's extension."""
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "CMYK": 4, "L": 1, "RGBA": 4}[mode]
    a = rng.integers(0, 256, (size[1], size[0], channels), dtype=np.uint8)
    img = Image.fromarray(a[..., 0] if channels == 1 else a, mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, fmt)
    return path


def make_image_folder(root: Path, splits: dict[str, dict[str, int]], size=(40, 30), ext: str = ".JPEG") -> Path:
    """root/<split>/<class>/<k><ext> with the given number of images per class."""
    seed = 0
    for split, classes in splits.items():
        for cls, count in classes.items():
            for k in range(count):
                seed += 1
                write_image(root / split / cls / f"{cls}_{k}{ext}", size=size, seed=seed)
    return root


def make_cifar_pickles(root: Path, name: str = "cifar10", n_train: int = 50, n_test: int = 20) -> tuple[np.ndarray, ...]:
    """A fake torchvision-format CIFAR root; returns (train NCHW, train labels, test NCHW, test labels)."""
    rng = np.random.default_rng(1)
    k = 10 if name == "cifar10" else 100
    folder = root / ("cifar-10-batches-py" if name == "cifar10" else "cifar-100-python")
    folder.mkdir(parents=True)
    key = "labels" if name == "cifar10" else "fine_labels"
    data = {s: (rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8), rng.integers(0, k, n))
            for s, n in (("train", n_train), ("test", n_test))}
    files = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]} if name == "cifar10" \
        else {"train": ["train"], "test": ["test"]}
    for split, names in files.items():
        x, y = data[split]
        for j, fname in enumerate(names):
            sl = slice(j * len(x) // len(names), (j + 1) * len(x) // len(names))
            with open(folder / fname, "wb") as f:
                pickle.dump({"data": x[sl].reshape(-1, 3072), key: y[sl].tolist()}, f)
    return data["train"][0], data["train"][1], data["test"][0], data["test"][1]
