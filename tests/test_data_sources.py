"""Dataset readers: layouts, label order, counts, subsets and strict class folders."""
import shutil
import tarfile
from collections import Counter

import numpy as np
import pytest
import torch

from bnnkit.data import CIFAR10_CLASSES, CIFAR100_CLASSES, DATASETS, DataError, build_loader, read_source
from tests._data_fixtures import CIFAR10_TRAIN_PER_CLASS
from tests._data_helpers import make_cifar_pickles, make_image_folder, write_image


def test_cifar10_folder_classes_and_counts(cifar10_root):
    train = read_source("cifar10", cifar10_root, "train")
    val = read_source("cifar10", cifar10_root, "val")
    assert train.classes == CIFAR10_CLASSES == tuple(DATASETS["cifar10"].classes)
    assert Counter(train.labels.tolist()) == {c: CIFAR10_TRAIN_PER_CLASS for c in range(10)}  # as unpacked
    assert Counter(val.labels.tolist()) == {c: 1000 for c in range(10)}
    # label = CIFAR's own index of the folder the file sits in
    for path, label in zip(train.paths[::199], train.labels[::199]):
        assert path.split("/")[-2] == CIFAR10_CLASSES[label]
    assert "/test/" in val.paths[0]


def test_cifar10_root_forms_agree(cifar10_root):
    a = read_source("cifar10", cifar10_root, "val", subset=20)
    b = read_source("cifar10", cifar10_root.parent, "val", subset=20)  # single subfolder cifar10-jpeg/
    assert a.paths == b.paths and np.array_equal(a.labels, b.labels)


def test_cifar_tarball_unpacked_to_cache(tmp_path, cifar10_root):
    src = tmp_path / "src" / "cifar10-jpeg"
    for split in ("train", "test"):
        for c in CIFAR10_CLASSES:
            (src / split / c).mkdir(parents=True)
            for k in range(2):
                shutil.copy(cifar10_root / split / c / f"{k:04d}.jpg", src / split / c)
    archive = tmp_path / "small.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(src, arcname="cifar10-jpeg")
    cache = tmp_path / "cache"
    loader = build_loader("cifar10", archive, "val", 8, cache_dir=str(cache))
    assert loader.dataset_size == 20 and len(loader) == 3
    unpacked = list((cache / "archives").iterdir())
    assert len(unpacked) == 1 and (unpacked[0] / "cifar10-jpeg" / "test" / "cat" / "0001.jpg").is_file()
    labels = torch.cat([y for _, y in loader])
    assert labels.tolist() == sorted(list(range(10)) * 2)
    broken = tmp_path / "broken.tar.gz"
    broken.write_bytes(archive.read_bytes()[:3000])
    with pytest.raises(DataError, match=r"cannot unpack .*broken.tar.gz .*unpack it yourself"):
        build_loader("cifar10", broken, "val", 8, cache_dir=str(cache))
    assert len(list((cache / "archives").iterdir())) == 1  # nothing half-unpacked left behind


def test_subset_is_balanced_and_deterministic(cifar10_root):
    a = read_source("cifar10", cifar10_root, "train", subset=25)
    b = read_source("cifar10", cifar10_root, "train", subset=25)
    assert a.paths == b.paths
    assert Counter(a.labels.tolist()) == {0: 3, 1: 3, 2: 3, 3: 3, 4: 3, 5: 2, 6: 2, 7: 2, 8: 2, 9: 2}
    with pytest.raises(DataError, match="smaller subset"):
        read_source("cifar10", cifar10_root, "val", subset=10_010)


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_torchvision_pickles(tmp_path, name):
    xtr, ytr, xte, yte = make_cifar_pickles(tmp_path, name)
    for split, x, y in (("train", xtr, ytr), ("val", xte, yte)):
        src = read_source(name, tmp_path, split)
        assert src.classes == (CIFAR10_CLASSES if name == "cifar10" else CIFAR100_CLASSES)
        assert np.array_equal(src.labels, y) and np.array_equal(src.arrays, x.transpose(0, 2, 3, 1))
    # both backends read the arrays; unaugmented pixels are the array's, normalised
    for backend in ("fast", "torch"):
        loader = build_loader(name, tmp_path, "val", 64, backend=backend, workers=0)
        images, labels = next(iter(loader))
        info = DATASETS[name]
        expect = (torch.from_numpy(xte).float() / 255 - torch.tensor(info.mean).view(1, 3, 1, 1)) / torch.tensor(info.std).view(1, 3, 1, 1)
        assert torch.equal(labels, torch.from_numpy(yte)) and torch.allclose(images, expect, atol=1e-6)


def test_cifar_missing_or_unexpected_class_folder(tmp_path, cifar10_root):
    root = tmp_path / "c10"
    for c in CIFAR10_CLASSES[:9]:  # 'truck' missing
        write_image(root / "train" / c / "0.jpg", size=(32, 32))
    with pytest.raises(DataError, match=r"missing: \['truck'\]"):
        read_source("cifar10", root, "train")
    write_image(root / "train" / "truck" / "0.jpg", size=(32, 32))
    write_image(root / "train" / "lorry" / "0.jpg", size=(32, 32))
    with pytest.raises(DataError, match=r"unexpected: \['lorry'\]"):
        read_source("cifar10", root, "train")
    shutil.rmtree(root / "train" / "lorry")
    assert len(read_source("cifar10", root, "train")) == 10
    with pytest.raises(DataError, match="no test or val/ folder"):
        read_source("cifar10", root, "val")


def test_missing_root_unknown_names(tmp_path):
    for name in DATASETS:
        with pytest.raises(DataError, match="does not exist"):
            build_loader(name, tmp_path / "nope", "train", 4)
    with pytest.raises(DataError, match="cifar10, cifar100, imagenet, tinyimagenet"):
        build_loader("mnist", tmp_path, "train", 4)
    with pytest.raises(DataError, match="'train' or 'val'"):
        build_loader("cifar10", tmp_path, "test", 4)
    with pytest.raises(DataError, match="choose one of auto, torch, fast, dali"):
        build_loader("cifar10", tmp_path, "train", 4, backend="gpu")
    (tmp_path / "junk").mkdir()
    (tmp_path / "other").mkdir()
    with pytest.raises(DataError, match="holds no cifar10 data"):
        build_loader("cifar10", tmp_path, "train", 4)


def test_imagenet_folder_labels_and_class_checks(tmp_path):
    synsets = ["n01440764", "n01443537", "n01484850"]
    root = make_image_folder(tmp_path / "in", {"train": dict(zip(synsets, (3, 2, 4))), "val": dict(zip(synsets, (1, 2, 1)))})
    train, val = read_source("imagenet", root, "train"), read_source("imagenet", root, "val")
    assert train.classes == val.classes == tuple(synsets)
    assert train.labels.tolist() == [0, 0, 0, 1, 1, 2, 2, 2, 2] and val.labels.tolist() == [0, 1, 1, 2]
    loader = build_loader("imagenet", root, "val", 3, workers=0)
    x, y = next(iter(loader))
    assert x.shape == (3, 3, 224, 224) and x.dtype == torch.float32 and y.dtype == torch.int64
    shutil.rmtree(root / "val" / synsets[1])  # a val class missing would shift labels: refuse
    with pytest.raises(DataError, match=r"missing: \['n01443537'\]"):
        read_source("imagenet", root, "val")
    with pytest.raises(DataError, match="no val/ folder"):
        read_source("imagenet", make_image_folder(tmp_path / "in2", {"train": {"n1": 1}}), "val")


def test_tinyimagenet_download_layout(tmp_path):
    root = tmp_path / "tiny-imagenet-200"
    wnids = ["n02124075", "n04067472"]
    for i, w in enumerate(wnids):  # train/<wnid>/images/*.JPEG as in the download
        for k in range(2):
            write_image(root / "train" / w / "images" / f"{w}_{k}.JPEG", size=(64, 64), seed=i * 10 + k)
        (root / "train" / w / f"{w}_boxes.txt").write_text("")
    for k, w in enumerate([wnids[1], wnids[0], wnids[1]]):
        write_image(root / "val" / "images" / f"val_{k}.JPEG", size=(64, 64), seed=100 + k)
    (root / "val" / "val_annotations.txt").write_text(
        "".join(f"val_{k}.JPEG\t{w}\t0\t0\t63\t63\n" for k, w in enumerate([wnids[1], wnids[0], wnids[1]])))
    train, val = read_source("tinyimagenet", tmp_path, "train"), read_source("tinyimagenet", tmp_path, "val")
    assert train.classes == tuple(wnids) and train.labels.tolist() == [0, 0, 1, 1]
    assert val.labels.tolist() == [1, 0, 1]
    x, y = next(iter(build_loader("tinyimagenet", tmp_path, "train", 4, workers=0)))
    assert x.shape == (4, 3, 224, 224) and sorted(y.tolist()) == [0, 0, 1, 1]
