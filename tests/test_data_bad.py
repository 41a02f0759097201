"""Bad data: each case is either converted to RGB or reported as a DataError naming the file."""
import pytest
import torch

from bnnkit.data import DataError, build_loader, read_source
from tests._data_helpers import make_image_folder, write_image

SYN = ["n01", "n02"]


def _folder(tmp_path):
    return make_image_folder(tmp_path / "in", {"train": {s: 2 for s in SYN}, "val": {s: 1 for s in SYN}})


@pytest.mark.parametrize("mode,fmt", [("L", "JPEG"), ("CMYK", "JPEG"), ("RGB", "PNG"), ("RGBA", "PNG")])
def test_non_rgb_images_are_converted(tmp_path, mode, fmt):
    root = _folder(tmp_path)
    odd = write_image(root / "val" / SYN[0] / "odd.JPEG", size=(300, 260), mode=mode, fmt=fmt, seed=7)
    src = read_source("imagenet", root, "val")
    i = src.paths.index(str(odd))
    assert src.load(i).mode == "RGB"
    loader = build_loader("imagenet", root, "val", 8, workers=0)
    x, y = next(iter(loader))
    assert x.shape == (3, 3, 224, 224) and torch.isfinite(x).all()


def _corrupt(path, kind):
    data = path.read_bytes()
    path.write_bytes(b"this is not an image" if kind == "garbage" else data[: len(data) // 2])


@pytest.mark.parametrize("kind", ["garbage", "truncated"])
@pytest.mark.parametrize("workers", [0, 2])
def test_corrupt_image_mid_epoch_names_the_file(tmp_path, kind, workers):
    root = _folder(tmp_path)
    bad = root / "train" / SYN[1] / f"{SYN[1]}_1.JPEG"
    write_image(bad, size=(300, 300), seed=3)  # big enough that half the file decodes partly
    _corrupt(bad, kind)
    # garbage has no image header: found when the loader is built; a truncated file when it is decoded
    with pytest.raises(DataError, match=rf"^corrupt or truncated image {bad}.*replace or delete") as err:
        for _ in build_loader("imagenet", root, "train", 1, workers=workers):
            assert kind == "truncated"
    assert "\n" not in str(err.value)  # a worker's error is one line, not "Caught DataError in DataLoader worker"


def test_torch_backend_checks_headers_when_built(tmp_path):
    root = _folder(tmp_path)
    empty = root / "val" / SYN[1] / "empty.JPEG"
    empty.write_bytes(b"")
    with pytest.raises(DataError, match=rf"^image file {empty} is empty \(0 bytes\): replace or delete"):
        build_loader("imagenet", root, "val", 1, workers=2)
    empty.write_bytes(b"\x00" * 64)
    with pytest.raises(DataError, match=rf"^corrupt or truncated image {empty} \(no image header\)"):
        build_loader("imagenet", root, "val", 1, workers=2)
    write_image(empty, fmt="PNG")  # a PNG under a .JPEG name is an image
    build_loader("imagenet", root, "val", 1, workers=2)


@pytest.mark.parametrize("kind", ["garbage", "truncated"])
def test_trainer_names_a_bad_image_of_the_torch_backend(tmp_path, kind):
    """ImageNet's layout always takes the torch backend: one `error:` line with the file and exit 1,
    whether the file fails its header check or in a DataLoader worker at the first batch."""
    from tests._train_fixtures import cli, one_error

    root = make_image_folder(tmp_path / "in", {"train": {s: 2 for s in SYN}, "val": {s: 1 for s in SYN}})
    bad = root / "train" / SYN[0] / f"{SYN[0]}_1.JPEG"
    write_image(bad, size=(300, 300), seed=3)
    _corrupt(bad, kind)
    code, _, err = cli("train", "--dataset", "imagenet", "--model", "resnet18_1w1a", "--data_path", root, "-b", "4",
                       "-bt", "2", "--epochs", "1", "--workers", "2", "--threads", "1", "--results_dir",
                       tmp_path / "runs", "--save", "bad", "--set", "tensorboard=false")
    assert code == 1
    one_error(err, f"corrupt or truncated image {bad}", "replace or delete")
    run = tmp_path / "runs" / "bad"
    if kind == "garbage":  # found before the run folder is made
        assert not run.exists()
    else:  # found at the first batch: no checkpoint (a rerun starts again), the error in log.txt
        assert not (run / "last.pt").exists() and f"corrupt or truncated image {bad}" in (run / "log.txt").read_text()


@pytest.mark.parametrize("kind", ["garbage", "truncated"])
def test_corrupt_cifar_image_found_before_training(tmp_path, cifar10_root, kind):
    src = read_source("cifar10", cifar10_root, "val")
    root = tmp_path / "c10"
    for p, label in zip(src.paths[::100], src.labels[::100]):  # 10 per class
        dst = root / "test" / p.split("/")[-2] / p.split("/")[-1]
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_bytes(open(p, "rb").read())
    bad = root / "test" / "dog" / sorted((root / "test" / "dog").iterdir())[3].name
    _corrupt(bad, kind)
    with pytest.raises(DataError, match=rf"corrupt or truncated image {bad}"):  # the fast path decodes up front
        build_loader("cifar10", root, "val", 16, cache_dir=str(tmp_path / "cache"))


def test_empty_class_folder(tmp_path):
    root = _folder(tmp_path)
    (root / "train" / "n03").mkdir()
    with pytest.raises(DataError, match=r"class folder .*n03 holds no images: add its images or remove the folder"):
        build_loader("imagenet", root, "train", 2)
    (root / "train" / "n03" / "notes.txt").write_text("not an image")
    with pytest.raises(DataError, match="n03 holds no images"):
        read_source("imagenet", root, "train")


def test_image_of_wrong_size_in_cifar_fast_path(tmp_path):
    from bnnkit.data import CIFAR10_CLASSES

    root = tmp_path / "c10"
    for c in CIFAR10_CLASSES:
        write_image(root / "test" / c / "0.jpg", size=(32, 32))
    write_image(root / "test" / "cat" / "1.jpg", size=(48, 32))
    with pytest.raises(DataError, match="1.jpg is 48x32 but the split's images are 32x32"):
        build_loader("cifar10", root, "val", 4, cache_dir=str(tmp_path / "cache"))
