"""The DALI backend: same order and parameters as the other backends, CPU-only here (device_id=None)."""
import importlib.util

import numpy as np
import pytest
import torch
from PIL import Image

from bnnkit.data import DataError, build_loader
from tests._data_helpers import make_cifar_pickles

HAVE_DALI = importlib.util.find_spec("nvidia") is not None and importlib.util.find_spec("nvidia.dali") is not None


def _pairs(a, b, epoch, start=0):
    a.set_epoch(epoch)
    b.set_epoch(epoch)
    return list(zip(a.iter_from(start), b.iter_from(start)))


@pytest.mark.dali
@pytest.mark.skipif(not HAVE_DALI, reason="NVIDIA DALI is not installed: pip install 'bnnkit[dali]'")
@pytest.mark.parametrize("split", ["train", "val"])
@pytest.mark.parametrize("rank", [0, 1])
def test_dali_cifar_equals_fast_path(cifar10_root, tmp_path, split, rank):
    kw = dict(subset=90, seed=9, rank=rank, world_size=2, cache_dir=str(tmp_path))
    fast = build_loader("cifar10", cifar10_root, split, 16, backend="fast", **kw)
    dali = build_loader("cifar10", cifar10_root, split, 16, backend="dali", **kw)
    assert len(dali) == len(fast) == 3 and dali.indices_for_epoch(1) == fast.indices_for_epoch(1)
    for epoch, start in ((1, 0), (2, 1)):
        pairs = _pairs(fast, dali, epoch, start)
        assert len(pairs) == 3 - start
        for (x1, y1), (x2, y2) in pairs:  # decoding, crop, flip, normalise: identical bits
            assert torch.equal(y1, y2) and torch.equal(x1, x2)


@pytest.mark.dali
@pytest.mark.skipif(not HAVE_DALI, reason="NVIDIA DALI is not installed: pip install 'bnnkit[dali]'")
def test_dali_cifar_pickles_equal_fast_path(tmp_path):
    make_cifar_pickles(tmp_path, "cifar100", n_train=40)
    fast = build_loader("cifar100", tmp_path, "train", 16, backend="fast", seed=1)
    dali = build_loader("cifar100", tmp_path, "train", 16, backend="dali", seed=1)
    for (x1, y1), (x2, y2) in _pairs(fast, dali, 0):
        assert torch.equal(y1, y2) and torch.equal(x1, x2)


def _smooth_image(path, w, h, seed):
    """Low-frequency content, so two resampling filters of the same crop agree closely."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / max(w, h)
    chans = [127 + 120 * np.sin(2 * np.pi * (rng.uniform(0.5, 2) * xx + rng.uniform(0.5, 2) * yy) + rng.uniform(0, 6))
             for _ in range(3)]
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.stack(chans, -1).astype(np.uint8)).save(path, quality=95)


@pytest.fixture
def smooth_imagenet(tmp_path):
    for split, count in (("train", 3), ("val", 2)):
        for c, syn in enumerate(["n01", "n02"]):
            for k in range(count):
                _smooth_image(tmp_path / split / syn / f"{k}.JPEG", 320 + 40 * k, 260 + 30 * c, seed=c * 10 + k)
    return tmp_path


@pytest.mark.dali
@pytest.mark.skipif(not HAVE_DALI, reason="NVIDIA DALI is not installed: pip install 'bnnkit[dali]'")
@pytest.mark.parametrize("split,lighting", [("train", False), ("train", True), ("val", False)])
def test_dali_imagenet_matches_torch_backend(smooth_imagenet, split, lighting):
    kw = dict(seed=3, workers=0, lighting=lighting)
    torch_l = build_loader("imagenet", smooth_imagenet, split, 4, backend="torch", **kw)
    dali_l = build_loader("imagenet", smooth_imagenet, split, 4, backend="dali", **kw)
    assert dali_l.indices_for_epoch(2) == torch_l.indices_for_epoch(2)
    for (x1, y1), (x2, y2) in _pairs(torch_l, dali_l, 2):
        assert torch.equal(y1, y2) and x1.shape == x2.shape == (len(y1), 3, 224, 224)
        # same crop box and flip per sample; only the resampling filter differs (PIL vs DALI linear)
        err = (x1 - x2).abs().mean(dim=(1, 2, 3))
        assert err.max() < 0.05, err
        assert (x1 - x2.flip(-1)).abs().mean(dim=(1, 2, 3)).min() > 4 * err.max()  # a wrong flip would show


@pytest.mark.dali
@pytest.mark.skipif(not HAVE_DALI, reason="NVIDIA DALI is not installed: pip install 'bnnkit[dali]'")
def test_dali_corrupt_image_names_the_file(smooth_imagenet):
    bad = smooth_imagenet / "train" / "n02" / "1.JPEG"
    bad.write_bytes(bad.read_bytes()[:200])
    loader = build_loader("imagenet", smooth_imagenet, "train", 2, backend="dali")
    with pytest.raises(DataError, match=f"corrupt or truncated image {bad}"):
        for _ in loader:
            pass


def test_dali_missing_says_how_to_install(tmp_path, monkeypatch):
    """Runs with or without DALI: the loader must explain the extra when the import failed."""
    import bnnkit.data._dali_loader as mod

    monkeypatch.setattr(mod, "fn", None)
    make_cifar_pickles(tmp_path)
    with pytest.raises(DataError, match=r"pip install 'bnnkit\[dali\]'"):
        build_loader("cifar10", tmp_path, "train", 8, backend="dali")


@pytest.mark.dali
@pytest.mark.skipif(not HAVE_DALI, reason="NVIDIA DALI is not installed: pip install 'bnnkit[dali]'")
def test_dali_converts_non_rgb_like_torch(smooth_imagenet):
    src = smooth_imagenet / "val" / "n01" / "0.JPEG"
    rgb = Image.open(src).convert("RGB")
    rgb.convert("L").save(smooth_imagenet / "val" / "n01" / "gray.JPEG", quality=95)
    rgb.convert("CMYK").save(smooth_imagenet / "val" / "n01" / "cmyk.JPEG", quality=95)
    rgb.save(smooth_imagenet / "val" / "n01" / "png.JPEG", format="PNG")
    torch_l = build_loader("imagenet", smooth_imagenet, "val", 8, backend="torch", workers=0)
    dali_l = build_loader("imagenet", smooth_imagenet, "val", 8, backend="dali")
    (x1, _), = list(torch_l)
    (x2, _), = list(dali_l)
    assert x1.shape == x2.shape == (7, 3, 224, 224)
    err = (x1 - x2).abs().mean(dim=(1, 2, 3))
    assert err.max() < 0.05, (torch_l.source.paths, err)  # each decoded to the same RGB picture
