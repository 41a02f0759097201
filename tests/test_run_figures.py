"""The figures every run leaves in its folder (bnnkit.figures, drawn by the trainer at each epoch's end):
each one there, a real picture, the method's scheduled settings found from metrics.csv's columns, and a
multi-stage run's stages on one epoch axis."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from bnnkit.figures import panels, read_run, update_run_figures
from tests._train_fixtures import TINY, cli


def assert_real_picture(path):
    img = np.asarray(Image.open(path).convert("RGB"))
    h, w, _ = img.shape
    assert w >= 200 and h >= 150, (path, img.shape)
    ink = (img.astype(int).sum(axis=2) < 600).mean()  # pixels clearly darker than white: axes, text, curves
    assert 0.01 < ink < 0.6, (path, ink)
    assert len(np.unique(img.reshape(-1, 3), axis=0)) > 20, path  # anti-aliased curves and text, not a flat fill


def test_a_two_epoch_run_leaves_every_figure(tmp_path):
    code, _, err = cli("train", "recipes/cifar10/siman_resnet20.yaml", *TINY, "--epochs", "2",
                       "--results_dir", tmp_path, "--save", "run")
    assert code == 0, err
    figs = tmp_path / "run" / "figures"
    names = sorted(p.name for p in figs.iterdir())
    # percent is SiMaN's scheduled setting: found as the column that is none of the trainer's own
    assert names == ["accuracy.png", "flip_ratio.png", "loss.png", "lr.png", "setting_percent.png"], names
    for p in figs.iterdir():
        assert_real_picture(p)
    assert not [p for p in figs.iterdir() if p.name.startswith(".")]  # no temporary file left behind


def test_a_two_stage_run_has_each_stage_and_the_whole_run_on_one_axis(tmp_path):
    code, _, err = cli("train", "recipes/cifar10/biper_resnet20.yaml", *TINY, "--results_dir", tmp_path,
                       "--set", "stage1.epochs=2", "--set", "stage2.epochs=2")
    assert code == 0, err
    top = tmp_path / "biper_resnet20"
    want = {"accuracy.png", "flip_ratio.png", "loss.png", "lr.png", "qe.png", "setting_tau.png"}
    for folder in (top / "stage1", top / "stage2", top):
        assert {p.name for p in (folder / "figures").iterdir()} == want, folder
        for name in want:
            assert_real_picture(folder / "figures" / name)
    run = read_run(str(top))
    assert [s.name for s in run.stages] == ["stage1", "stage2"]
    # stage 1: epochs 0, 1 at x 1, 2; stage 2 logs its epoch 1 (the authors' offset) after stage 1's 2 epochs
    assert run.series("lr")[0] == [1, 2, 4]
    assert run.boundaries() == [(2, "stage2")]


def test_settings_come_from_the_columns_and_a_failure_is_only_a_warning(tmp_path):
    names = [p.name for p in panels(["epoch", "lr", "train_loss", "val_loss", "k", "t", "flip_ratio"])]
    assert names == ["loss", "lr", "setting_k", "setting_t", "flip_ratio"]
    (tmp_path / "metrics.csv").write_text("epoch,lr,train_loss\n0,0.1,2.3\n")
    (tmp_path / "figures").write_text("a file where the figures folder goes")
    warnings = []
    assert update_run_figures(str(tmp_path), None, warnings.append) == []
    assert len(warnings) == 1 and "no figures" in warnings[0]
    with pytest.raises(ValueError, match="holds no run"):
        read_run(str(tmp_path / "nothing"))
