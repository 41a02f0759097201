"""Faults during training: a diverged model is never checkpointed, a run folder belongs to one
training at a time, a failed or stopped run can be started again or resumed."""
from __future__ import annotations

import errno
import math
import os
import signal
import subprocess
import time

import pytest
import torch

from bnnkit.train import read_checkpoint
from tests._train_fixtures import CIFAR, PYTHON, ROOT, cli, env, one_error

# 64 images in one batch: one optimizer step an epoch.
SMALL = ["--method", "siman", "--model", "resnet20_1w1a", "--data_path", CIFAR, "--subset", "64", "--val_subset", "64",
         "-b", "64", "-bt", "64", "--workers", "1", "--threads", "1", "--set", "tensorboard=false"]


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


def _wait_for(path, text, proc, timeout=120):
    start = time.time()
    while time.time() - start < timeout:
        if path.exists() and text in path.read_text():
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.2)
    raise AssertionError(f"{text!r} never appeared in {path}")


def test_one_training_per_folder_sigterm_checkpoints_and_sigkill_leaves_no_lock(tmp_path):
    run = ["train", *SMALL, "-b", "16", "--epochs", "2", "--results_dir", tmp_path, "--save", "r"]
    log = tmp_path / "r" / "log.txt"
    slow = env(BNNKIT_TEST_BATCH_SLEEP="0.4")
    first = subprocess.Popen([PYTHON, "-m", "bnnkit", *map(str, run)], cwd=ROOT, env=slow, stderr=subprocess.PIPE, text=True)
    _wait_for(log, "epoch 0: lr", first)
    t0 = time.time()
    code, _, err = cli(*run)
    assert code == 2 and time.time() - t0 < 30
    one_error(err, "in use by another training")
    first.send_signal(signal.SIGTERM)
    _, err = first.communicate(timeout=120)
    assert first.returncode == 128 + signal.SIGTERM
    one_error(err, "stopped by SIGTERM", "--resume")
    mid = read_checkpoint(str(tmp_path / "r" / "last.pt"))
    assert mid["epoch"] == 0 and mid["batch"] is not None
    assert "stopped by SIGTERM" in log.read_text()
    killed = subprocess.Popen([PYTHON, "-m", "bnnkit", *map(str, run), "--resume"], cwd=ROOT, env=slow,
                              stderr=subprocess.PIPE, text=True)
    _wait_for(log, "resuming", killed)
    killed.kill()
    killed.communicate()
    code, _, err = cli(*run, "--resume")  # the dead process's lock went with it
    assert code == 0, err
    assert read_checkpoint(str(tmp_path / "r" / "last.pt"))["finished"]


def test_folder_without_a_checkpoint_is_started_again(tmp_path):
    for i, extra in enumerate(([], ["--resume"])):
        code, _, err = cli("train", *SMALL, "--epochs", "1", "--lr", "1e30", "--results_dir", tmp_path, "--save", f"f{i}")
        assert code == 1 and (tmp_path / f"f{i}" / "log.txt").exists()
        code, _, err = cli("train", *SMALL, "--epochs", "1", "--results_dir", tmp_path, "--save", f"f{i}", *extra)
        assert code == 0, err
        assert "holds no checkpoint (the run stopped before its first one): starting it again" in err
        assert read_checkpoint(str(tmp_path / f"f{i}" / "last.pt"))["finished"]


def test_resume_refuses_changed_settings_unless_allowed(tmp_path):
    run = ["train", *SMALL, "--epochs", "1", "--results_dir", tmp_path, "--save", "c"]
    code, _, err = cli(*run)
    assert code == 0, err
    before = (tmp_path / "c" / "last.pt").read_bytes()
    code, _, err = cli(*run[:-4], "--epochs", "2", "--lr", "0.5", "-b", "32", "--optimizer", "adam",
                       *run[-4:], "--resume")
    assert code == 2
    one_error(err, "epochs 1 -> 2", "lr 0.1 -> 0.5", "batch_size 64 -> 32", "optimizer sgd -> adam", "--allow_changed")
    assert (tmp_path / "c" / "last.pt").read_bytes() == before
    code, _, err = cli(*run[:-4], "--epochs", "2", "--optimizer", "adam", *run[-4:], "--resume", "--allow_changed")
    assert code == 0, err
    assert "optimizer sgd -> adam" in (tmp_path / "c" / "log.txt").read_text()
    assert read_checkpoint(str(tmp_path / "c" / "last.pt"))["epoch"] == 1


def test_folder_left_by_a_run_killed_before_its_config_is_started_again(tmp_path):
    """SIGKILL between taking the folder's lock and writing config.yaml leaves only .lock: --resume
    (what the chaos test's next run passes) starts the run again instead of "no checkpoint"; a new
    folder says nothing about an earlier run."""
    (tmp_path / "k").mkdir()
    (tmp_path / "k" / ".lock").touch()
    code, _, err = cli("train", *SMALL, "--epochs", "1", "--results_dir", tmp_path, "--save", "k", "--resume")
    assert code == 0, err
    assert "holds no checkpoint (the run stopped before its first one): starting it again" in err
    assert read_checkpoint(str(tmp_path / "k" / "last.pt"))["finished"]
    code, _, err = cli("train", *SMALL, "--epochs", "1", "--results_dir", tmp_path, "--save", "fresh")
    assert code == 0, err
    assert "holds no checkpoint" not in err


@pytest.mark.parametrize("how", ["oserror", "torch"])
def test_disk_full_while_checkpointing_is_one_line_and_keeps_the_previous_files(tmp_path, monkeypatch, how):
    """The first write of epoch 1 fails half-way with ENOSPC, raised as such or as torch.save reports it
    (a RuntimeError whose context is the OSError): one line, exit 1, epoch 0's files intact, no temporary file."""
    import bnnkit.train._checkpoint as ck

    real, calls = torch.save, []

    def save(obj, out, *a, **k):
        calls.append(out)
        if len(calls) <= 2:  # epoch 0's best.pt and last.pt
            return real(obj, out, *a, **k)
        out.write(b"half a checkpoint")
        try:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        except OSError:
            if how == "oserror":
                raise
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")

    monkeypatch.setattr(ck.torch, "save", save)
    code, _, err = cli("train", *SMALL, "--epochs", "2", "--results_dir", tmp_path, "--save", "full")
    assert code == 1 and len(calls) == 3
    run = tmp_path / "full"
    line = one_error(err, "no space left on device writing", str(run), "; free space or pass another --results_dir")
    assert line.endswith(".pt; free space or pass another --results_dir")
    for name in ("last.pt", "best.pt"):
        ckpt = read_checkpoint(str(run / name))
        assert ckpt["epoch"] == 0 and ckpt["batch"] is None
    assert not list(run.glob(".*.tmp"))
    assert "no space left on device" in (run / "log.txt").read_text()
