"""Short real trainings on CIFAR-10 (128 + 128 images) for SiMaN, BiPer stage 1 and BiPer stage 2, then
`eval` and `qe` on their checkpoints; run-folder contents; checkpoints; and that the trainer applies
the schedules it is supposed to."""
from __future__ import annotations

import csv
import math
import shutil

import numpy as np
import pytest
import torch

from bnnkit.compat import reference_names
from bnnkit.train import lr_per_epoch, quantization_error, read_checkpoint
from tests._train_fixtures import CIFAR, TINY, cli


def rows(path):
    with open(path) as fh:
        return list(csv.DictReader(fh))


def test_siman_run_folder_checkpoints_and_eval(tmp_path):
    code, out, err = cli("train", "recipes/cifar10/siman_resnet20.yaml", *TINY, "--epochs", "2",
                         "--results_dir", tmp_path, "--save", "siman", "--set", "tensorboard=true")
    assert code == 0, err
    run = tmp_path / "siman"
    for name in ("config.yaml", "log.txt", "metrics.csv", "last.pt", "best.pt"):
        assert (run / name).is_file(), name
    assert any((run / "tensorboard").iterdir())
    assert "best top-1" in out
    # The lr and percent the trainer applied are the recipe's schedule (here E = 2, warm-up on).
    lrs = lr_per_epoch(0.1, 2, warm_up=True)
    got = rows(run / "metrics.csv")
    assert [int(r["epoch"]) for r in got] == [0, 1]
    assert [float(r["lr"]) for r in got] == pytest.approx(lrs)
    assert [float(r["percent"]) for r in got] == [15.0, 7.5]
    assert 0.0 <= float(got[1]["flip_ratio"]) <= 1.0
    ckpt = torch.load(run / "last.pt", map_location="cpu", weights_only=True)
    assert ckpt["spec"]["method"] == "siman" and ckpt["spec"]["model"] == "resnet20_1w1a"
    assert ckpt["spec"]["settings"]["percent"] == 7.5 and ckpt["epoch"] == 1 and ckpt["batch"] is None
    assert ckpt["finished"] and set(ckpt["rng"]) >= {"torch", "numpy", "python"}
    assert ckpt["config"]["seed"] == 123 and ckpt["optimizer"]["param_groups"][1]["weight_decay"] == 0.0
    best = max(float(r["val_top1"]) for r in got)
    assert read_checkpoint(str(run / "best.pt"))["best_prec1"] == pytest.approx(best)
    code, out, err = cli("eval", run / "best.pt", "--data_path", CIFAR, "--val_subset", "128")
    assert code == 0, err
    assert "top1" in out and "(128 images)" in out
    code, out, err = cli("qe", run / "last.pt")
    assert code == 2 and "QE is BiPer's" in err


def test_biper_two_stages_end_to_end_then_eval_and_qe(tmp_path):
    code, out, err = cli("train", "recipes/cifar10/biper_resnet20.yaml", *TINY, "--results_dir", tmp_path,
                         "--set", "stage1.epochs=2", "--set", "stage2.epochs=2")
    assert code == 0, err
    run = tmp_path / "biper_resnet20"
    s1, s2 = rows(run / "stage1" / "metrics.csv"), rows(run / "stage2" / "metrics.csv")
    assert [int(r["epoch"]) for r in s1] == [0, 1]
    assert [int(r["epoch"]) for r in s2] == [1]  # stage 2 starts at epoch 1 (Q14)
    assert float(s2[0]["lr"]) == pytest.approx(0.0037 * 2 / 5)
    assert float(s1[0]["tau"]) == float(np.float32(0.037)) and float(s2[0]["tau"]) == float(np.float32(0.0468))
    assert float(s1[1]["qe"]) > 0 and float(s2[0]["b"]) > 0
    c1, c2 = read_checkpoint(str(run / "stage1" / "best.pt")), read_checkpoint(str(run / "stage2" / "last.pt"))
    assert c1["spec"]["settings"]["stage"] == 1 and c2["spec"]["settings"]["stage"] == 2
    assert c1["spec"]["settings"]["freq"] == c2["spec"]["settings"]["freq"] == 20.0
    assert "stage 2 starts from" in (run / "stage2" / "log.txt").read_text()

    # eval of the stage-2 best checkpoint reproduces the logged validation top-1, with the trained f (Q17 fixed)
    best2 = run / "stage2" / "best.pt"
    code, out, err = cli("eval", best2, "--data_path", CIFAR, "--val_subset", "128", "--json")
    assert code == 0, err
    import json
    res = json.loads(out)
    assert res["top1"] == pytest.approx(float(s2[0]["val_top1"]))
    assert res["loss"] == pytest.approx(float(s2[0]["val_loss"]))  # includes R (Q9)

    # stage 1's best checkpoint: eval reproduces its best epoch's logged numbers; qe works on it too
    code, out, err = cli("eval", run / "stage1" / "best.pt", "--data_path", CIFAR, "--val_subset", "128", "--json")
    assert code == 0, err
    best1 = max(s1, key=lambda r: float(r["val_top1"]))
    assert json.loads(out)["top1"] == pytest.approx(float(best1["val_top1"]))
    code, out, err = cli("qe", run / "stage1" / "best.pt")
    assert code == 0 and "QE=" in out, err

    code, _, err = cli("eval", best2, "--data_path", CIFAR, "--freq", "30")  # the authors' default f (Q17): refused
    assert code == 2 and "contradicts the checkpoint's trained frequency 20.0" in err

    # The same weights as an authors' checkpoint (their key names, config.txt with freq beside it)
    authors = tmp_path / "authors"
    authors.mkdir()
    from bnnkit.train import model_from_checkpoint
    ck2 = read_checkpoint(str(best2))
    model = model_from_checkpoint(ck2)
    names = reference_names(model)
    torch.save({"epoch": 2, "state_dict": {"module." + names[k]: v for k, v in model.state_dict().items()}},
               authors / "model_best.pth.tar")
    (authors / "config.txt").write_text("2024-01-01\nprint_freq:  100\nfreq:  20.0\n")
    code, out, err = cli("eval", authors / "model_best.pth.tar", "--data_path", CIFAR, "--val_subset", "128",
                         "--model", "resnet20_1w1a", "--method", "biper", "--dataset", "cifar10", "--json")
    assert code == 0, err
    assert json.loads(out)["top1"] == pytest.approx(res["top1"])

    # qe: per layer and total, with the checkpoint's own frequency
    code, out, err = cli("qe", best2)
    assert code == 0, err
    want = quantization_error(model)
    assert f"QE={want['qe']:.6f}" in out and f"b={want['b']:.6f}" in out
    assert "layer1.0.conv1" in out and len(want["layers"]) == 18
    f = 20.0
    w = model.layer1[0].conv1.weight.detach()
    assert want["layers"][0]["qe"] == pytest.approx(float((torch.sin(f * w) - torch.sign(torch.sin(f * w))).abs().mean()))


def test_biper_stage2_recipe_alone_starts_from_stage1_checkpoint(tmp_path):
    code, _, err = cli("train", "recipes/cifar10/biper_resnet20_stage1.yaml", *TINY, "--epochs", "1",
                       "--results_dir", tmp_path)
    assert code == 0, err
    stage1 = tmp_path / "biper_resnet20_stage1" / "best.pt"
    from bnnkit.train._config import resolve
    from bnnkit.train._main import build_model
    from bnnkit.train._runlog import RunLog
    cfg = resolve({"method": "biper", "model": "resnet20_1w1a", "stage": 2, "load_ckpt_stage1": str(stage1),
                   "data_path": str(CIFAR)})
    model, _ = build_model(cfg, str(tmp_path / "unused"), RunLog(None, quiet=True))
    src = read_checkpoint(str(stage1))["state_dict"]
    for k, v in model.state_dict().items():
        if k.endswith("weight_quantizer.beta"):  # stage-2 init: beta = mean|W| per output channel
            w = src[k.replace("weight_quantizer.beta", "weight")]
            assert torch.equal(v, w.abs().mean(dim=(1, 2, 3)).reshape(-1, 1, 1))
        else:
            assert torch.equal(v, src[k]), k
    assert all(c.weight_quantizer.stage == 2 and c.weight_quantizer.freq == 20.0
               for _, c in __import__("bnnkit.nn.layers").nn.layers.binary_convs(model))
    code, _, err = cli("train", "recipes/cifar10/biper_resnet20_stage2.yaml", *TINY, "--epochs", "2",
                       "--results_dir", tmp_path, "--load_ckpt_stage1", stage1)
    assert code == 0, err
    assert read_checkpoint(str(tmp_path / "biper_resnet20_stage2" / "last.pt"))["spec"]["settings"]["stage"] == 2


def test_bf16_autocast_on_cpu(tmp_path):
    code, _, err = cli("train", "--method", "siman", *TINY, "--epochs", "1", "--amp", "bf16", "--results_dir", tmp_path,
                       "--save", "bf16")
    assert code == 0, err
    got = rows(tmp_path / "bf16" / "metrics.csv")
    assert len(got) == 1 and math.isfinite(float(got[0]["train_loss"]))
    assert read_checkpoint(str(tmp_path / "bf16" / "last.pt"))["config"]["amp"] == "bf16"
    # weights stay float32 (autocast only changes the compute dtype)
    assert read_checkpoint(str(tmp_path / "bf16" / "last.pt"))["state_dict"]["layer1.0.conv1.weight"].dtype == torch.float32
