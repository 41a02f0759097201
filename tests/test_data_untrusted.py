"""Data never runs code: CIFAR pickles go through a data-only unpickler, archives unpack inside their target."""
from __future__ import annotations

import io
import pickle
import tarfile

import numpy as np
import pytest

from bnnkit.data import DataError, read_source
from bnnkit.data._pickle import load_data_pickle
from tests._data_helpers import make_cifar_pickles
from tests._train_fixtures import cli


class _Creates:
    """Unpickling this calls open(marker, 'w'): a file appears if the reader runs what a pickle says."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _poison(folder, fname, marker):
    with open(folder / fname, "wb") as f:
        pickle.dump({"label_names": _Creates(marker), "labels": _Creates(marker), "data": _Creates(marker)}, f)


def test_genuine_pickles_still_load():
    arr = np.arange(12, dtype=np.uint8).reshape(3, 4)
    for proto in (2, 4, 5):
        out = load_data_pickle(pickle.dumps({"data": arr, "labels": [1, 2], "names": ("a", b"b")}, protocol=proto))
        assert np.array_equal(out["data"], arr) and out["labels"] == [1, 2] and out["names"] == ("a", b"b")


@pytest.mark.parametrize("fname", ["batches.meta", "data_batch_1"])
@pytest.mark.parametrize("packed", [False, True])
def test_crafted_cifar_pickle_runs_nothing(tmp_path, fname, packed):
    root = tmp_path / "c10"
    make_cifar_pickles(root)
    marker = tmp_path / "pwned"
    _poison(root / "cifar-10-batches-py", fname, marker)
    data = root
    if packed:
        data = tmp_path / "c10.tar.gz"
        with tarfile.open(data, "w:gz") as tar:
            tar.add(root / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    code, _, err = cli("train", "--method", "siman", "--model", "resnet20_1w1a", "--data_path", data, "--epochs", "1",
                       "-b", "16", "--workers", "1", "--cache_dir", tmp_path / "cache", "--results_dir", tmp_path,
                       "--save", "run", "--set", "tensorboard=false")
    assert not marker.exists()
    assert code == 1 and "Traceback" not in err
    errors = [l for l in err.splitlines() if l.startswith("error:")]
    assert len(errors) == 1 and fname in errors[0] and "io.open" in errors[0], err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("kind", ["traversal", "absolute", "symlink"])
def test_archive_cannot_write_outside_its_folder(tmp_path, kind):
    archive = tmp_path / "evil.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        if kind == "symlink":
            link = tarfile.TarInfo("cifar-10-batches-py")
            link.type, link.linkname = tarfile.SYMTYPE, str(tmp_path)
            tar.addfile(link)
        info = tarfile.TarInfo({"traversal": "../../../escaped.txt", "absolute": str(tmp_path / "escaped.txt"),
                                "symlink": "cifar-10-batches-py/escaped.txt"}[kind])
        info.size = 3
        tar.addfile(info, io.BytesIO(b"bad"))
    # a leading / is stripped (the member lands inside the target, so the archive holds no CIFAR)
    with pytest.raises(DataError, match="cannot unpack" if kind != "absolute" else "holds no cifar10 data"):
        read_source("cifar10", archive, "train", cache_dir=str(tmp_path / "cache"))
    assert not [p for p in tmp_path.rglob("escaped.txt") if "cache" not in p.relative_to(tmp_path).parts]
