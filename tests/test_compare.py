"""`bnnkit compare` on a 2 x 2 grid (two methods, two seeds) of tiny real runs: uninterrupted; then killed
with SIGKILL in its second run and resumed, which reruns nothing finished and gives the same table;
the HTML report; bad specs as one error line."""
from __future__ import annotations

import csv
import os
import signal
import subprocess
import time

import pytest

from tests._train_fixtures import CIFAR, PYTHON, ROOT, cli, cli_subprocess, env, snapshot
from tests.test_run_figures import assert_real_picture

SPEC = f"""
methods: [siman, ste]
models: [resnet20_1w1a]
seeds: [1, 2]
train: {{data_path: {CIFAR}, epochs: 2, subset: 128, val_subset: 128, batch_size: 64, batch_size_test: 128,
         workers: 1, threads: 1, tensorboard: false, warm_up: false}}
"""
RUNS = ["siman_resnet20_1w1a_seed1", "siman_resnet20_1w1a_seed2", "ste_resnet20_1w1a_seed1", "ste_resnet20_1w1a_seed2"]


@pytest.fixture(scope="module")
def spec(tmp_path_factory):
    path = tmp_path_factory.mktemp("spec") / "grid.yaml"
    path.write_text(SPEC)
    return path


@pytest.fixture(scope="module")
def uninterrupted(spec, tmp_path_factory):
    root = tmp_path_factory.mktemp("whole")
    done = cli_subprocess("compare", spec, "--results_dir", root, "--report", timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    return root


def results(root):
    with open(root / "results.csv") as fh:
        return list(csv.DictReader(fh))


def test_the_grid_gives_results_a_table_figures_and_a_report(uninterrupted):
    rows = results(uninterrupted)
    assert [r["run"] for r in rows] == RUNS
    for r in rows:
        assert r["epochs"] == "2" and 0 <= float(r["best_top1"]) <= 100 and float(r["final_train_loss"]) > 0
        assert float(r["wall_s"]) > 0 and float(r["images_per_s"]) > 0
        assert int(r["size_bytes"]) > 0 and int(r["bops"]) > 0 and r["final_qe"] == ""
    table = (uninterrupted / "results.md").read_text().splitlines()
    assert table[0].startswith("| method | model | setting | seeds | epochs | best top-1")
    assert [line.split(" | ")[0] for line in table[2:]] == ["| siman", "| ste"]
    best = [float(r["best_top1"]) for r in rows[:2]]
    mean, sd = sum(best) / 2, abs(best[0] - best[1]) / 2 ** 0.5
    assert f"| {mean:.2f} ± {sd:.2f} |" in table[2]
    assert_real_picture(uninterrupted / "figures" / "accuracy.png")
    page = (uninterrupted / "report.html").read_text()
    assert "<table>" in page and page.count("data:image/png;base64,") == len(list((uninterrupted / "figures").iterdir()))


def test_killed_mid_way_then_resumed_reruns_nothing_finished(spec, uninterrupted, tmp_path):
    root = tmp_path / "killed"
    cmd = [PYTHON, "-m", "bnnkit", "compare", str(spec), "--results_dir", str(root)]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)  # its own process group: the trainings die with it
    second = root / "runs" / RUNS[1]
    deadline = time.time() + 300
    # the second run is half done: its first epoch's row is written (after its checkpoint; a kill
    # between the two loses the row, a trainer matter that this test does not take on)
    while not (second / "metrics.csv").exists():
        assert proc.poll() is None and time.time() < deadline, "the compare ended before it could be killed"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    first = root / "runs" / RUNS[0]
    assert (first / "done.json").is_file() and not (second / "done.json").exists()
    before = snapshot(first)

    done = cli_subprocess("compare", spec, "--results_dir", root, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{RUNS[0]}: finished earlier, kept" in done.stdout
    assert snapshot(first) == before  # not rerun: not one file of it rewritten
    assert (root / "logs" / f"{RUNS[1]}.txt").read_text().count("--resume") == 1  # continued from its checkpoint
    with open(second / "metrics.csv") as fh:
        assert [r["epoch"] for r in csv.DictReader(fh)] == ["0", "1"]
    assert (root / "results.md").read_text() == (uninterrupted / "results.md").read_text()
    timing = {"wall_s", "images_per_s"}
    assert [{k: v for k, v in r.items() if k not in timing} for r in results(root)] == \
        [{k: v for k, v in r.items() if k not in timing} for r in results(uninterrupted)]


def test_bad_specs_are_one_error_line(tmp_path):
    cases = {"methods: [nosuch]\nmodels: [resnet20_1w1a]\nseeds: [0]\n": "nosuch",
             "methods: [siman]\nmodels: [resnet20_1w1a]\nseeds: [0]\nsettings: {freq: [5]}\n": "freq",
             "methods: [siman]\nmodels: [resnet20_1w1a]\nseeds: [0]\ntrain: {seed: 3}\n": "seed",
             "methods: [siman]\nseeds: [0]\n": "models",
             "methods: [siman]\nmodels: [resnet20_1w1a]\nseeds: [0]\nbudget: 3\n": "budget"}
    for i, (text, word) in enumerate(cases.items()):
        path = tmp_path / f"bad{i}.yaml"
        path.write_text(text)
        code, _, err = cli("compare", path, "--results_dir", tmp_path / "out")
        assert code == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1, (text, err)
        assert word in err, (text, err)
    code, _, err = cli("compare", tmp_path / "missing.yaml")
    assert code == 2 and err.startswith("error: ")


def test_a_stage_killed_before_its_first_checkpoint_is_started_again(tmp_path):
    from bnnkit.analysis.compare import _drop_unstarted_stages

    for stage, files in (("stage1", ("config.yaml", "last.pt", "metrics.csv")), ("stage2", ("config.yaml", "log.txt"))):
        (tmp_path / stage).mkdir()
        for f in files:
            (tmp_path / stage / f).write_text("x")
    _drop_unstarted_stages(str(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stage1"]
    assert (tmp_path / "stage1" / "last.pt").exists()


def test_the_shipped_specs_load():
    from bnnkit.analysis.compare import load_spec
    from bnnkit.analysis.bench import builds
    from bnnkit.methods import list_methods

    jobs, train, _ = load_spec(str(ROOT / "recipes" / "compare" / "biper_qe_vs_freq.yaml"))
    assert [j.setting["freq"] for j in jobs[::3]] == [5, 10, 20, 30, 40] and {j.seed for j in jobs} == {0, 1, 2}
    assert train["epochs"] == 30 and train["lr_type"] == "cos"
    jobs, _, _ = load_spec(str(ROOT / "recipes" / "compare" / "cifar10_all_methods.yaml"))
    # every method that builds the protocol's ResNet-20 (ReActNet has its own models)
    methods = [m for m in list_methods() if builds("resnet20_1w1a", m)]
    assert sorted({j.method for j in jobs}) == sorted(methods) and len(jobs) == 2 * len(methods)


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs /proc to see a zombie (Linux)")
def test_a_killed_trainer_left_a_zombie_or_a_reused_pid_does_not_count_as_running(tmp_path):
    # A SIGKILLed compare leaves its trainer to the container's init, which may never reap it: the
    # zombie keeps its pid, and a signal 0 alone would call the folder busy for ever (as CI saw).
    from bnnkit.analysis.compare import _alive, _process_identity
    pid_file = tmp_path / ".compare.pid"
    proc = subprocess.Popen(["sleep", "60"])
    try:
        pid_file.write_text(_process_identity(proc.pid))
        assert _alive(str(pid_file))
        pid_file.write_text(f"{proc.pid} 1")  # the same pid, another process's start time
        assert not _alive(str(pid_file))
        pid_file.write_text(_process_identity(proc.pid))
        proc.kill()
        deadline = time.time() + 10
        while _process_identity(proc.pid) is not None:  # not reaped yet: a zombie
            assert time.time() < deadline
            time.sleep(0.01)
        assert os.path.exists(f"/proc/{proc.pid}") and not _alive(str(pid_file))
    finally:
        proc.kill()
        proc.wait()


def test_spec_recipes_resolve_from_any_folder_and_a_bad_one_fails_before_training(tmp_path, monkeypatch):
    from bnnkit.analysis.compare import load_spec
    from bnnkit.errors import BnnkitError

    monkeypatch.chdir(tmp_path)  # not the repository: `recipes/cifar10/...` must still be found
    jobs, _, _ = load_spec(str(ROOT / "recipes" / "compare" / "cifar10_all_methods.yaml"))
    recipes = {j.method: j.recipe for j in jobs}
    assert recipes["siman"] == str(ROOT / "recipes" / "cifar10" / "siman_resnet20.yaml")
    assert recipes["ste"] is None
    spec = tmp_path / "s.yaml"
    spec.write_text("methods: {siman: cifar10/siman_resnet20, biper: recipes/cifar10/no_such.yaml}\n"
                    "models: [resnet20_1w1a]\nseeds: [0]\n")
    with pytest.raises(BnnkitError, match="compare spec .*: unknown recipe 'recipes/cifar10/no_such.yaml'"):
        load_spec(str(spec))
    assert not (tmp_path / "runs").exists()
