"""Bad input: one clear line `error: ...` naming the problem and the fix, a non-zero exit status (2 usage,
1 runtime), no traceback, and no file of an earlier run overwritten."""
from __future__ import annotations

import shutil

import pytest
import torch

from bnnkit.train import read_checkpoint
from tests._train_fixtures import CIFAR, TINY, cli, one_error, snapshot


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    code, _, err = cli("train", "--method", "siman", *TINY, "--epochs", "1", "--results_dir", root, "--save", "good")
    assert code == 0, err
    return root / "good"


def test_missing_data_folder(tmp_path):
    code, _, err = cli("train", *TINY, "--data_path", tmp_path / "nope", "--results_dir", tmp_path, "--save", "x")
    assert code == 1
    one_error(err, str(tmp_path / "nope"))
    assert not (tmp_path / "x").exists()  # nothing written before the data is known to be there


def test_empty_data_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    code, _, err = cli("train", *TINY, "--data_path", tmp_path / "empty", "--results_dir", tmp_path, "--save", "x")
    assert code == 1
    one_error(err, "empty")
    assert not (tmp_path / "x").exists()


def test_results_folder_holding_a_run_is_not_overwritten(run):
    before = snapshot(run)
    code, _, err = cli("train", "--method", "siman", *TINY, "--epochs", "1", "--results_dir", run.parent, "--save", "good")
    assert code == 2
    one_error(err, "already holds a run", "--resume", "--save")
    assert snapshot(run) == before


def test_checkpoint_of_another_model_or_method(run, tmp_path):
    code, _, err = cli("eval", run / "last.pt", "--data_path", CIFAR, "--method", "biper")
    assert code == 1
    one_error(err, "siman", "not method 'biper'")
    before = snapshot(run)
    code, _, err = cli("train", "--method", "siman", *TINY, "--model", "vgg_small_1w1a", "--epochs", "2",
                       "--results_dir", run.parent, "--save", "good", "--resume")
    assert code == 1
    one_error(err, "resnet20_1w1a", "not model 'vgg_small_1w1a'")
    assert snapshot(run) == before
    code, _, err = cli("train", "--method", "biper", "--stage", "2", *TINY, "--epochs", "2", "--results_dir", tmp_path,
                       "--load_ckpt_stage1", run / "best.pt")
    assert code == 1
    one_error(err, "siman", "not method 'biper'")


def test_truncated_or_corrupt_checkpoint(run, tmp_path):
    data = (run / "last.pt").read_bytes()
    (tmp_path / "half.pt").write_bytes(data[: len(data) // 2])
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint at all")
    for bad in ("half.pt", "junk.pt"):
        code, _, err = cli("eval", tmp_path / bad, "--data_path", CIFAR)
        assert code == 1
        one_error(err, "truncated or corrupt", bad)
    # resuming a run whose last checkpoint is damaged: refused, and nothing of the run rewritten
    broken = tmp_path / "broken"
    shutil.copytree(run, broken)
    (broken / "last.pt").write_bytes(data[: len(data) // 3])
    before = snapshot(broken)
    code, _, err = cli("train", "--method", "siman", *TINY, "--epochs", "2", "--results_dir", tmp_path, "--save", "broken",
                       "--resume")
    assert code == 1
    one_error(err, "truncated or corrupt")
    assert snapshot(broken) == before


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    calls = {"n": 0}
    real = torch.nn.CrossEntropyLoss.forward

    def poisoned(self, output, target):  # epoch 0: 2 training + 1 validation batch; then NaN
        calls["n"] += 1
        loss = real(self, output, target)
        return loss * float("nan") if calls["n"] > 3 else loss

    monkeypatch.setattr(torch.nn.CrossEntropyLoss, "forward", poisoned)
    code, _, err = cli("train", "--method", "siman", *TINY, "--epochs", "3", "--results_dir", tmp_path, "--save", "nan")
    assert code == 1
    one_error(err, "nan", "epoch 1, batch 1", "last.pt", "--lr")
    kept = read_checkpoint(str(tmp_path / "nan" / "last.pt"))
    assert (kept["epoch"], kept["batch"]) == (0, None)
    assert all(torch.isfinite(v).all() for v in kept["state_dict"].values() if v.is_floating_point())


@pytest.mark.parametrize("argv, needles", [
    (["train", "no_such_recipe"], ["unknown recipe 'no_such_recipe'", "cifar10/siman_resnet20"]),
    (["train", "--model", "resnet99", "--data_path", "x"], ["unknown model 'resnet99'", "resnet20_1w1a"]),
    (["train", "--method", "magic", "--data_path", "x"], ["unknown method 'magic'", "biper", "siman"]),
    (["frobnicate"], ["unknown command 'frobnicate'", "train", "eval"]),
])
def test_unknown_names_list_the_valid_ones(argv, needles):
    code, _, err = cli(*argv)
    assert code == 2
    one_error(err, *needles)


@pytest.mark.parametrize("argv, needle", [
    (["--method", "biper", "--stage2", "--stage", "1"], "--stage2 contradicts --stage 1"),
    (["--method", "biper", "--tau", "0.1", "--tau_min", "0.1"], "either --tau or --tau_min"),
    (["--method", "siman", "--freq", "20"], "--freq is a BiPer setting"),
    (["--use_dali", "--backend", "fast"], "--use_dali contradicts --backend fast"),
    (["--method", "siman", "--load_ckpt_stage1", "x.pt"], "--load_ckpt_stage1"),
    (["-e", "x.pt", "--resume"], "give one of them"),
    (["--method", "biper", "--stage", "2"], "--load_ckpt_stage1"),
    (["--data_path", str(CIFAR), "-b", "63", "--amp", "fp16"], "--amp fp16 needs a GPU"),
])
def test_contradictory_flags(argv, needle, tmp_path):
    code, _, err = cli("train", *argv, "--results_dir", tmp_path, "--data_path", CIFAR)
    assert code == 2
    one_error(err, needle)
    assert not any(tmp_path.iterdir())


def test_authors_checkpoint_needs_model_method_dataset(run, tmp_path):
    state = read_checkpoint(str(run / "last.pt"))["state_dict"]
    torch.save({"state_dict": state}, tmp_path / "theirs.pth.tar")
    code, _, err = cli("eval", tmp_path / "theirs.pth.tar", "--data_path", CIFAR, "--method", "siman")
    assert code == 2
    one_error(err, "not a bnnkit checkpoint", "--model", "--dataset")


def test_eval_without_data_and_missing_checkpoint(run, tmp_path):
    code, _, err = cli("eval", run / "last.pt")
    assert code == 2
    one_error(err, "--data_path")
    code, _, err = cli("eval", tmp_path / "missing.pt", "--data_path", CIFAR)
    assert code == 1
    one_error(err, "does not exist")
