"""`bnnkit plot`: tiny real runs on the same axes, the legend from what differs between their configs,
and runs that differ only by seed drawn as one mean with a band."""
from __future__ import annotations

import csv

import pytest

from bnnkit.analysis.plots import group_runs, read_runs
from bnnkit.figures import _mean_band
from tests._train_fixtures import TINY, cli
from tests.test_run_figures import assert_real_picture


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("plot")
    for save, extra in (("a", ["--seed", "1"]), ("b", ["--seed", "2"]), ("c", ["--seed", "1", "--lr", "0.05"])):
        code, _, err = cli("train", "recipes/cifar10/siman_resnet20.yaml", *TINY, "--epochs", "2",
                           "--results_dir", root, "--save", save, *extra)
        assert code == 0, err
    return root


def column(path, name):
    with open(path) as fh:
        return [float(r[name]) for r in csv.DictReader(fh)]


def test_two_runs_overlaid_with_the_difference_as_legend(runs, tmp_path):
    code, out, err = cli("plot", runs / "a", runs / "c", "-o", tmp_path / "out")
    assert code == 0, err
    written = out.split()
    assert {p.rsplit("/", 1)[1] for p in written} >= {"loss.png", "accuracy.png", "lr.png", "setting_percent.png"}
    for p in written:
        assert_real_picture(p)
    groups = group_runs(read_runs([str(runs / "a"), str(runs / "c")]))
    assert [(label, len(members)) for label, members in groups] == [("lr=0.1", 1), ("lr=0.05", 1)]


def test_runs_differing_only_by_seed_become_a_mean_with_a_band(runs, tmp_path):
    groups = group_runs(read_runs([str(runs / n) for n in "abc"]))
    assert [(label, len(members)) for label, members in groups] == [("lr=0.1", 2), ("lr=0.05", 1)]
    xs, mean, sd = _mean_band(groups[0][1], "val_loss")
    a, b = column(runs / "a" / "metrics.csv", "val_loss"), column(runs / "b" / "metrics.csv", "val_loss")
    assert xs == [1, 2]
    assert mean == pytest.approx([(x + y) / 2 for x, y in zip(a, b)])
    assert sd == pytest.approx([abs(x - y) / 2 ** 0.5 for x, y in zip(a, b)])
    code, _, err = cli("plot", runs / "a", runs / "b", "-o", tmp_path / "seeds")
    assert code == 0, err
    assert_real_picture(tmp_path / "seeds" / "loss.png")


def test_a_folder_without_a_run_is_one_error_line(tmp_path):
    code, _, err = cli("plot", tmp_path / "missing", "-o", tmp_path / "out")
    assert code == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    code, _, err = cli("plot", tmp_path)
    assert code == 2  # -o is required
