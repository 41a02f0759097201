"""The published per-image pipelines (spec section 6) and BiPer's Lighting (Q21)."""
import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from bnnkit.data import DATASETS, DataError, Lighting, build_loader, build_transform
from bnnkit.data._info import IMAGENET_MEAN, IMAGENET_STD
from bnnkit.data._lighting import lighting_offset


def _types(tf):
    return [type(t).__name__ for t in tf.transforms]


def test_cifar_pipelines_and_constants():
    tf = build_transform("cifar10", train=True)
    assert _types(tf) == ["RandomCrop", "RandomHorizontalFlip", "ToTensor", "Normalize"]
    crop = tf.transforms[0]
    assert crop.size == (32, 32) and crop.padding == 4 and crop.fill == 0 and crop.padding_mode == "constant"
    assert tf.transforms[1].p == 0.5
    assert tuple(tf.transforms[3].mean) == IMAGENET_MEAN and tuple(tf.transforms[3].std) == IMAGENET_STD  # Q27
    assert _types(build_transform("cifar10", train=False)) == ["ToTensor", "Normalize"]
    norm100 = build_transform("cifar100", train=True).transforms[3]
    assert tuple(norm100.mean) == (0.507, 0.487, 0.441) and tuple(norm100.std) == (0.267, 0.256, 0.276)


def test_imagenet_pipelines():
    tf = build_transform("imagenet", train=True)
    assert _types(tf) == ["RandomResizedCrop", "RandomHorizontalFlip", "ToTensor", "Normalize"]
    rrc = tf.transforms[0]
    assert rrc.size == (224, 224) and rrc.scale == (0.08, 1.25) and rrc.ratio == (3 / 4, 4 / 3)
    assert rrc.interpolation == T.InterpolationMode.BILINEAR
    lit = build_transform("imagenet", train=True, lighting=True)
    assert _types(lit) == ["RandomResizedCrop", "Lighting", "RandomHorizontalFlip", "ToTensor", "Normalize"]
    val = build_transform("imagenet", train=False)
    assert _types(val) == ["Resize", "CenterCrop", "ToTensor", "Normalize"]
    assert val.transforms[0].size == 256 and val.transforms[1].size == (224, 224)
    tiny = build_transform("tinyimagenet", train=True)
    assert _types(tiny) == ["Resize", "RandomRotation", "RandomHorizontalFlip", "ToTensor", "Normalize"]
    assert tiny.transforms[1].degrees == [-20.0, 20.0] and tuple(tiny.transforms[4].mean) == DATASETS["tinyimagenet"].mean


def test_lighting_is_truncated_uint8_offset_from_np_random():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    a[0, 0] = (0, 255, 128)
    seed = next(s for s in range(100) if (np.random.seed(s) or lighting_offset(0.1) < 0).any())
    np.random.seed(seed)
    out = np.asarray(Lighting(0.1)(Image.fromarray(a)))
    np.random.seed(seed)
    inc = lighting_offset(0.1)
    assert np.abs(inc).max() < 0.2  # 0-255 units: a tiny offset
    expect = np.clip(a.astype(np.float32) + inc, 0, 255).astype(np.uint8)
    assert np.array_equal(out, expect)
    diff = out.astype(int) - a.astype(int)
    assert set(np.unique(diff)) <= {-1, 0} and (diff != 0).any()  # effectively a 0/-1 jitter
    np.random.seed(seed)
    assert np.array_equal(np.asarray(Lighting(0.1)(Image.fromarray(a))), out)  # drawn from np.random
    assert Lighting(0.0)(Image.fromarray(a)) is not None and np.array_equal(np.asarray(Lighting(0)(Image.fromarray(a))), a)


def test_lighting_flag_only_for_imagenet(tmp_path):
    with pytest.raises(DataError, match="lighting=True is BiPer's ImageNet augmentation"):
        build_loader("cifar10", tmp_path, "train", 4, lighting=True)
    with pytest.raises(DataError, match="backend='fast' is for small same-size images"):
        build_loader("imagenet", tmp_path, "train", 4, backend="fast")


def test_train_flag_overrides_split(cifar10_root, tmp_path):
    aug = build_loader("cifar10", cifar10_root, "val", 20, subset=20, train=True, cache_dir=str(tmp_path))
    plain = build_loader("cifar10", cifar10_root, "val", 20, subset=20, cache_dir=str(tmp_path))
    assert aug.indices_for_epoch(0) != list(range(20)) and plain.indices_for_epoch(0) == list(range(20))
    x_aug = next(iter(aug))[0]
    x_plain = next(iter(plain))[0]
    assert x_aug.shape == x_plain.shape and not torch.equal(x_aug.sort(0).values, x_plain.sort(0).values)
