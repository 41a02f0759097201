"""Crash safety: a CPU run killed with SIGKILL in the middle of an epoch and resumed ends with the same
weights, bit for bit, as an uninterrupted run; resuming at an epoch boundary too."""
from __future__ import annotations

import signal

import pytest

import torch

from bnnkit.train import read_checkpoint
from tests._train_fixtures import CIFAR, cli, cli_subprocess, one_error

# 128 images in batches of 32: 4 batches an epoch; a checkpoint every 2 batches.
RUN = ["--method", "siman", "--model", "resnet20_1w1a", "--data_path", CIFAR, "--subset", "128", "--val_subset", "64",
       "-b", "32", "-bt", "64", "--epochs", "2", "--warm_up", "--seed", "7", "--workers", "1", "--threads", "1",
       "--deterministic", "--checkpoint_every", "2", "--set", "tensorboard=false"]


def weights(path):
    return read_checkpoint(str(path))["state_dict"]


def test_sigkill_mid_epoch_then_resume_is_bit_exact(tmp_path):
    ref = cli_subprocess("train", *RUN, "--results_dir", tmp_path, "--save", "straight")
    assert ref.returncode == 0, ref.stderr
    # SIGKILL right after batch 3 (of 4) of epoch 1: the newest checkpoint is the one after batch 2.
    killed = cli_subprocess("train", *RUN, "--results_dir", tmp_path, "--save", "crash",
                            BNNKIT_DEBUG_KILL_AT="1:3")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    mid = read_checkpoint(str(tmp_path / "crash" / "last.pt"))
    assert (mid["epoch"], mid["batch"]) == (1, 2)  # batch 3 is lost and redone
    assert not list((tmp_path / "crash").glob(".*.tmp"))
    again = cli_subprocess("train", *RUN, "--results_dir", tmp_path, "--save", "crash", "--resume")
    assert again.returncode == 0, again.stderr
    a, b = weights(tmp_path / "straight" / "last.pt"), weights(tmp_path / "crash" / "last.pt")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    ra, rb = (read_checkpoint(str(tmp_path / n / "last.pt")) for n in ("straight", "crash"))
    assert ra["best_prec1"] == rb["best_prec1"]
    sa = ra["optimizer"]["state"]
    sb = rb["optimizer"]["state"]
    assert all(torch.equal(sa[i]["momentum_buffer"], sb[i]["momentum_buffer"]) for i in sa)
    # the epoch metrics of the interrupted epoch are those of the straight run
    assert (tmp_path / "straight" / "metrics.csv").read_text().splitlines()[2].split(",")[:8] == \
        (tmp_path / "crash" / "metrics.csv").read_text().splitlines()[2].split(",")[:8]


def test_two_stage_run_resumes_in_stage_2(tmp_path):
    args = ["train", "recipes/cifar10/biper_resnet20.yaml", "--data_path", CIFAR, "--subset", "64", "--val_subset", "64",
            "-b", "32", "-bt", "64", "--workers", "1", "--threads", "1", "--checkpoint_every", "1",
            "--set", "stage1.epochs=1", "--set", "stage2.epochs=3", "--set", "tensorboard=false",
            "--results_dir", tmp_path]
    killed = cli_subprocess(*args, BNNKIT_DEBUG_KILL_AT="2:1")  # stage 1 has only epoch 0: this is in stage 2
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    stage1 = (tmp_path / "biper_resnet20" / "stage1" / "metrics.csv").read_text()
    again = cli_subprocess(*args, "--resume")
    assert again.returncode == 0, again.stderr
    assert (tmp_path / "biper_resnet20" / "stage1" / "metrics.csv").read_text() == stage1  # stage 1 not rerun
    last = read_checkpoint(str(tmp_path / "biper_resnet20" / "stage2" / "last.pt"))
    assert last["finished"] and last["epoch"] == 2 and last["spec"]["settings"]["stage"] == 2
    epochs = [l.split(",")[0] for l in (tmp_path / "biper_resnet20" / "stage2" / "metrics.csv").read_text().splitlines()[1:]]
    assert epochs == ["1", "2"]


FAST = [a if a != "2" or RUN[i - 1] != "--checkpoint_every" else "0" for i, a in enumerate(RUN)]


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    root = tmp_path_factory.mktemp("straight")
    ref = cli_subprocess("train", *FAST, "--results_dir", root, "--save", "straight")
    assert ref.returncode == 0, ref.stderr
    return root / "straight"


@pytest.mark.parametrize("point", ["best:0", "last:1"])
def test_kill_inside_the_checkpoint_writes_resumes_consistently(tmp_path, straight, point):
    """Killed after best.pt of epoch 0 (before last.pt), or after the last epoch's last.pt (before its
    metrics row): the resumed run's files equal an uninterrupted run's; stale temporary files go."""
    fast = FAST
    killed = cli_subprocess("train", *fast, "--results_dir", tmp_path, "--save", "k",
                            BNNKIT_TEST_KILL_AT=point)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    (tmp_path / "k" / ".last.pt.stale.tmp").write_bytes(b"half a file")
    again = cli_subprocess("train", *fast, "--results_dir", tmp_path, "--save", "k", "--resume")
    assert again.returncode == 0, again.stderr
    assert not list((tmp_path / "k").glob(".*.tmp"))
    for name in ("last.pt", "best.pt"):
        a, b = read_checkpoint(str(straight / name)), read_checkpoint(str(tmp_path / "k" / name))
        assert a["epoch"] == b["epoch"] and a["best_epoch"] == b["best_epoch"]
        assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    rows = [[l.split(",")[:8] for l in (f / "metrics.csv").read_text().splitlines()] for f in (straight, tmp_path / "k")]
    assert rows[0] == rows[1]


def test_timed_mid_epoch_checkpoints_resume_bit_exact(tmp_path, straight):
    """--checkpoint_minutes 0.0001 (6 ms): a checkpoint after each batch, by the clock, through the same
    path as --checkpoint_every; the run resumed from one (with the timer changed, which --resume
    accepts) ends bit for bit where the uninterrupted run, which wrote none, ended."""
    run = [*FAST, "--results_dir", tmp_path, "--save", "timed"]
    killed = cli_subprocess("train", *run, "--checkpoint_minutes", "0.0001", BNNKIT_DEBUG_KILL_AT="1:3")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    mid = read_checkpoint(str(tmp_path / "timed" / "last.pt"))
    assert (mid["epoch"], mid["batch"]) == (1, 3)  # written after batch 3, then killed
    again = cli_subprocess("train", *run, "--checkpoint_minutes", "0", "--resume")
    assert again.returncode == 0, again.stderr
    assert "resuming" in again.stderr and "batch 3" in again.stderr
    a, b = weights(straight / "last.pt"), weights(tmp_path / "timed" / "last.pt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("value", ["-1", "nan", "inf", "ten"])
def test_bad_checkpoint_minutes_is_refused_where_parsed(tmp_path, value):
    code, _, err = cli("train", *FAST, "--checkpoint_minutes", value, "--results_dir", tmp_path, "--save", "bad")
    assert code == 2
    one_error(err, "checkpoint_minutes")
    assert not (tmp_path / "bad").exists()


def test_two_stage_run_resumes_a_stage_that_has_only_best_pt(tmp_path):
    """Killed after stage 1's best.pt, before its last.pt: --resume continues (the stage has a
    checkpoint) instead of refusing the stage's folder as one that already holds a run."""
    args = ["train", "recipes/cifar10/biper_resnet20.yaml", "--data_path", CIFAR, "--subset", "64", "--val_subset", "64",
            "-b", "64", "-bt", "64", "--workers", "1", "--threads", "1", "--set", "stage1.epochs=1",
            "--set", "stage2.epochs=2", "--set", "tensorboard=false", "--set", "figures=false", "--results_dir", tmp_path]
    killed = cli_subprocess(*args, BNNKIT_TEST_KILL_AT="best:0")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    stage1 = tmp_path / "biper_resnet20" / "stage1"
    assert (stage1 / "best.pt").exists() and not (stage1 / "last.pt").exists()
    again = cli_subprocess(*args, "--resume")
    assert again.returncode == 0, again.stderr
    last = read_checkpoint(str(tmp_path / "biper_resnet20" / "stage2" / "last.pt"))
    assert last["finished"] and last["spec"]["settings"]["stage"] == 2
