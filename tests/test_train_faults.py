"""Faults during training: a diverged model is never checkpointed, a run folder belongs to one
training at a time, a failed or stopped run can be started again or resumed."""
from __future__ import annotations

import math

import torch

from bnnkit.train import read_checkpoint
from tests._train_fixtures import CIFAR, cli

# 64 images in one batch: one optimizer step an epoch.
SMALL = ["--method", "siman", "--model", "resnet20_1w1a", "--data_path", CIFAR, "--subset", "64", "--val_subset", "64",
         "-b", "64", "-bt", "64", "--workers", "1", "--threads", "1", "--set", "tensorboard=false"]


def one_error(err: str, *needles: str) -> str:
    assert "Traceback" not in err
    errors = [l for l in err.splitlines() if l.startswith("error:")]
    assert len(errors) == 1, err
    for n in needles:
        assert n in errors[0], errors[0]
    return errors[0]


def test_nan_weights_are_never_checkpointed(tmp_path, monkeypatch):
    import bnnkit.train._main as main

    real = main.lr_per_epoch
    # epoch 0 trains normally, epoch 1's step turns every weight NaN (as --lr nan did)
    monkeypatch.setattr(main, "lr_per_epoch", lambda *a, **k: [real(*a, **k)[0], float("nan")])
    code, _, err = cli("train", *SMALL, "--epochs", "2", "--results_dir", tmp_path, "--save", "nan")
    assert code == 1
    last = tmp_path / "nan" / "last.pt"
    one_error(err, "non-finite at epoch 1", str(last))
    for name in ("last.pt", "best.pt"):
        ckpt = read_checkpoint(str(tmp_path / "nan" / name))
        assert ckpt["epoch"] == 0
        assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point())
    assert "non-finite at epoch 1" in (tmp_path / "nan" / "log.txt").read_text()


def test_finite_weights_with_nan_outputs_are_never_checkpointed(tmp_path):
    code, _, err = cli("train", *SMALL, "--epochs", "2", "--lr", "1e30", "--results_dir", tmp_path, "--save", "big")
    assert code == 1
    one_error(err, "validation loss became nan at epoch 0", "no checkpoint")
    assert not (tmp_path / "big" / "last.pt").exists() and not (tmp_path / "big" / "best.pt").exists()


def test_eval_of_a_diverged_model_fails(tmp_path):
    code, _, err = cli("train", *SMALL, "--epochs", "1", "--results_dir", tmp_path, "--save", "ok")
    assert code == 0, err
    ckpt = read_checkpoint(str(tmp_path / "ok" / "last.pt"))
    ckpt["state_dict"] = {k: (v * math.inf if v.is_floating_point() else v) for k, v in ckpt["state_dict"].items()}
    torch.save(ckpt, tmp_path / "inf.pt")
    code, out, err = cli("eval", tmp_path / "inf.pt", "--data_path", CIFAR, "--val_subset", "64")
    assert code == 1
    one_error(err, "non-finite")
