"""The fast backend equals torchvision's per-image pipeline, is resumable, and caches by content."""
import os
import shutil

import numpy as np
import pytest
import torch
from torchvision import transforms as T

from bnnkit.data import DATASETS, build_loader, build_transform, read_source
from bnnkit.data._augment import crop_flip, crop_flip_params
from bnnkit.data._normalize import normalize_uint8
from bnnkit.data._order import generator


def _torchvision(img, top, left, flip, monkeypatch, name="cifar10"):
    """The torch backend's own Compose, with RandomCrop's offsets and the flip forced."""
    tf = build_transform(name, train=True)
    crop, hflip = tf.transforms[0], tf.transforms[1]
    assert isinstance(crop, T.RandomCrop) and isinstance(hflip, T.RandomHorizontalFlip)
    monkeypatch.setattr(T.RandomCrop, "get_params", staticmethod(lambda *a: (top, left, 32, 32)))
    hflip.p = 1.0 if flip else 0.0
    return tf(img)


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_crop_flip_is_torchvision_for_every_offset(cifar10_root, monkeypatch, name):
    src = read_source("cifar10", cifar10_root, "val", subset=3)
    imgs = [src.load(i) for i in range(3)]
    x = torch.stack([torch.from_numpy(np.array(im)) for im in imgs]).permute(0, 3, 1, 2)  # uint8 NCHW
    info = DATASETS[name]
    for top in range(9):
        for left in range(9):
            for flip in (False, True):
                n = len(imgs)
                fast = normalize_uint8(crop_flip(x, torch.full((n,), top), torch.full((n,), left),
                                                 torch.full((n,), flip)), info.mean, info.std)
                ref = torch.stack([_torchvision(im, top, left, flip, monkeypatch, name) for im in imgs])
                assert torch.equal(fast, ref), (top, left, flip)


def test_fast_loader_batch_is_torchvision_with_its_params(cifar10_root, monkeypatch, tmp_path):
    loader = build_loader("cifar10", cifar10_root, "train", 32, subset=64, seed=5, cache_dir=str(tmp_path))
    loader.set_epoch(2)
    idx = loader.indices_for_epoch()[32:64]
    x, y = list(loader)[1]
    top, left, flip = crop_flip_params(32, generator(5, 2, 0, 1))
    assert set(top.tolist()) | set(left.tolist()) <= set(range(9)) and 0 < flip.sum() < 32
    src = loader.source
    for k, i in enumerate(idx):
        assert torch.equal(x[k], _torchvision(src.load(i), int(top[k]), int(left[k]), bool(flip[k]), monkeypatch))
        assert y[k] == src.labels[i]


def test_fast_val_is_torchvision_test_transform(cifar10_root, tmp_path):
    loader = build_loader("cifar10", cifar10_root, "val", 50, subset=50, cache_dir=str(tmp_path))
    assert loader.indices_for_epoch(7) == list(range(50))  # no shuffle for evaluation
    x, _ = next(iter(loader))
    tf = build_transform("cifar10", train=False)
    assert torch.equal(x, torch.stack([tf(loader.source.load(i)) for i in range(50)]))


def _epoch(loader, epoch, start=0):
    loader.set_epoch(epoch)
    return list(loader.iter_from(start))


@pytest.mark.parametrize("backend,workers", [("fast", 2), ("torch", 0), ("torch", 2)])
def test_resume_mid_epoch_is_bit_identical(cifar10_root, tmp_path, backend, workers):
    kw = dict(subset=40, seed=11, cache_dir=str(tmp_path), backend=backend, workers=workers)
    a = build_loader("cifar10", cifar10_root, "train", 8, **kw)
    full = _epoch(a, 3)
    b = build_loader("cifar10", cifar10_root, "train", 8, **kw)  # a fresh process after a restart
    resumed = _epoch(b, 3, start=2)
    assert len(full) == len(a) == 5 and len(resumed) == 3
    for (x1, y1), (x2, y2) in zip(full[2:], resumed):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    other = _epoch(a, 4)
    assert not torch.equal(full[0][1], other[0][1])  # reshuffled per epoch
    assert sorted(torch.cat([y for _, y in other]).tolist()) == sorted(torch.cat([y for _, y in full]).tolist())


def test_torch_backend_augmentation_independent_of_workers(cifar10_root):
    kw = dict(subset=24, seed=2, backend="torch")
    x0 = torch.cat([x for x, _ in build_loader("cifar10", cifar10_root, "train", 6, workers=0, **kw)])
    x2 = torch.cat([x for x, _ in build_loader("cifar10", cifar10_root, "train", 6, workers=2, **kw)])
    assert torch.equal(x0, x2)
    state = torch.get_rng_state()
    list(build_loader("cifar10", cifar10_root, "train", 6, workers=0, **kw))
    assert torch.equal(state, torch.get_rng_state())  # the caller's RNG stream is left alone


def test_decoded_cache_keyed_by_content(cifar10_root, tmp_path, monkeypatch):
    root = tmp_path / "c10"
    shutil.copytree(cifar10_root / "test", root / "test", ignore=lambda d, f: [n for n in f if n.endswith(".jpg") and n > "0002.jpg"])
    cache = tmp_path / "env-cache"
    monkeypatch.setenv("BNNKIT_CACHE", str(cache))
    first = build_loader("cifar10", root, "val", 30)
    files = os.listdir(cache / "decoded")
    assert len(files) == 1 and files[0].endswith(".pt") and not any(f.startswith(".") for f in files)
    again = build_loader("cifar10", root, "val", 30)
    assert os.listdir(cache / "decoded") == files and torch.equal(again.images, first.images)
    # replace one image's content: new key, new entry, new pixels
    target = root / "test" / "bird" / "0001.jpg"
    shutil.copy(root / "test" / "ship" / "0000.jpg", target)
    os.utime(target, ns=(1, 1))
    changed = build_loader("cifar10", root, "val", 30)
    assert len(os.listdir(cache / "decoded")) == 2
    k = changed.source.paths.index(str(target))
    j = changed.source.paths.index(str(root / "test" / "ship" / "0000.jpg"))
    assert torch.equal(changed.images[k], changed.images[j]) and not torch.equal(changed.images[k], first.images[k])
    # a damaged cache file is rebuilt, not trusted
    for f in os.listdir(cache / "decoded"):
        (cache / "decoded" / f).write_bytes(b"garbage")
    assert torch.equal(build_loader("cifar10", root, "val", 30).images, changed.images)
    # an explicit cache_dir wins over the environment
    build_loader("cifar10", root, "val", 30, cache_dir=str(tmp_path / "arg"))
    assert len(os.listdir(tmp_path / "arg" / "decoded")) == 1


def test_batches_on_requested_device(cifar10_root, tmp_path):
    loader = build_loader("cifar10", cifar10_root, "train", 16, subset=16, device="cpu", cache_dir=str(tmp_path))
    x, y = next(iter(loader))
    assert x.device.type == y.device.type == "cpu" and x.dtype == torch.float32 and y.dtype == torch.int64
    assert x.is_contiguous() and x.shape == (16, 3, 32, 32)
