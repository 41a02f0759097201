"""Bad values of training flags and bad files to export: one error line where they are parsed, no traceback."""
from __future__ import annotations

import errno
import os

import pytest
import torch

from bnnkit.train import read_checkpoint
from tests._train_fixtures import CIFAR, TINY, cli, one_error


@pytest.mark.parametrize("flag,value,needle", [
    ("--lr", "-0.1", "--lr must be"), ("--lr", "nan", "argument --lr: expected a finite number"), ("--weight_decay", "-0.0001", "--weight_decay"),
    ("--momentum", "-0.9", "--momentum"), ("--momentum", "1.5", "--momentum"), ("--threads", "-1", "--threads"),
    ("--workers", "-2", "--workers"), ("--subset", "0", "--subset")])
def test_bad_training_values(tmp_path, flag, value, needle):
    code, _, err = cli("train", *TINY, "--epochs", "1", f"{flag}={value}", "--results_dir", tmp_path, "--save", "x")
    assert code == 2
    one_error(err, needle, value)
    assert not (tmp_path / "x").exists()


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    root = tmp_path_factory.mktemp("ck")
    code, _, err = cli("train", *TINY, "--subset", "32", "--val_subset", "32", "--epochs", "1", "--results_dir", root,
                       "--save", "r")
    assert code == 0, err
    return root / "r" / "last.pt"


@pytest.mark.parametrize("key", ["spec", "state_dict"])
def test_checkpoint_missing_a_part(tmp_path, ckpt, key):
    obj = read_checkpoint(str(ckpt))
    del obj[key]
    torch.save(obj, tmp_path / "cut.pt")
    code, _, err = cli("eval", tmp_path / "cut.pt", "--data_path", CIFAR)
    assert code == 1
    one_error(err, repr(key), "damaged")


def test_pickled_code_checkpoint_is_named_so(tmp_path):
    torch.save({"model": torch.nn.Linear(2, 2)}, tmp_path / "code.pt")
    code, _, err = cli("eval", tmp_path / "code.pt", "--data_path", CIFAR)
    assert code == 1
    line = one_error(err, "pickled code")
    assert "weights_only=False" not in line and "truncated" not in line


def test_export_refusals(tmp_path, ckpt):
    (tmp_path / "empty.pt").write_bytes(b"")
    for args, needle in (([tmp_path / "empty.pt", "-o", tmp_path / "m.bnn"], "empty.pt"),
                         ([ckpt, "-o", ckpt], "the checkpoint itself"),
                         ([ckpt, "-o", tmp_path / "nope" / "m.bnn"], "does not exist"),
                         ([ckpt, "-o", tmp_path / "m.bnn", "--input-shape", "1,1,32,32"], "takes 3")):
        before = ckpt.read_bytes()
        code, _, err = cli("export", *args)
        assert code == (1 if needle == "empty.pt" else 2)  # a bad file is a runtime error, a bad flag a usage one
        one_error(err, needle)
        assert ckpt.read_bytes() == before and not (tmp_path / "m.bnn").exists()


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux)")
def test_export_onto_a_full_device(ckpt):
    code, _, err = cli("export", ckpt, "-o", "/dev/full")
    assert code == 1
    one_error(err, "/dev/full", "no space left on device", "; free space or write elsewhere")
    assert os.path.exists("/dev/full") and not os.path.isfile("/dev/full")  # written into, never replaced


def test_export_onto_a_full_disk_leaves_no_partial_file(tmp_path, ckpt, monkeypatch):
    """The disk fills half-way through the write: the earlier model.bnn is kept whole, and no
    temporary file is left next to it."""
    import bnnkit.deploy._format as fmt

    real_open = open

    class FullDisk:
        def __init__(self, f):
            self.f = f

        def write(self, data):
            self.f.write(data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    monkeypatch.setattr(fmt, "open", lambda *a, **k: FullDisk(real_open(*a, **k)), raising=False)
    (tmp_path / "model.bnn").write_bytes(b"the earlier export")
    code, _, err = cli("export", ckpt, "-o", tmp_path / "model.bnn")
    assert code == 1
    one_error(err, str(tmp_path / "model.bnn"), "no space left on device; free space or write elsewhere")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.bnn"]
    assert (tmp_path / "model.bnn").read_bytes() == b"the earlier export"
