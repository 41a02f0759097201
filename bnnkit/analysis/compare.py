"""`bnnkit compare SPEC.yaml`: a grid of methods x models x settings x seeds at one budget, each run a
`bnnkit train` subprocess, one after another (or one per GPU with --gpus), then one table.

The spec (recipes/compare/ has one):

    methods: [siman, biper]       # names, `all` (every registered method), or {name: recipe} to
                                  # start each method from its recipe (multi-stage ones run every stage)
    models: [resnet20_1w1a]
    seeds: [0, 1, 2]
    settings: {freq: [5, 10, 20]} # optional: every combination is one setting; each key must be a
                                  # trainer key or an option of every method in the grid
    train: {dataset: cifar10, epochs: 30, lr_type: cos}   # given to every run (flags beat recipes)
    results_dir: runs/compare/NAME                        # optional (default: runs/compare/SPEC's name)

Resumable: a finished run leaves done.json in its folder and is never rerun; an unfinished one is
resumed from its checkpoint (or started again where it had none). The runs are children in the
compare's process group, so killing the group stops them too; a folder whose trainer still runs
(another compare) is an error. Writes results.csv (one row per run), results.md (mean ± std over
seeds per method, model and setting), figures/ (every run overlaid: bnnkit plot) and, with
--report, report.html: the table and the figures in one self-contained page.
"""
from __future__ import annotations

import base64
import csv
import html
import itertools
import json
import math
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

import yaml

from .._command import ArgumentParser
from ..errors import BnnkitError, ConfigError
from ..figures import read_run

RESULT_COLUMNS = ["method", "model", "setting", "seed", "run", "best_top1", "final_top1", "final_train_loss",
                  "final_qe", "epochs", "wall_s", "images_per_s", "size_bytes", "bops", "flops"]
# What the Markdown table averages over seeds: deterministic numbers only, so that a resumed
# compare gives the same table as an uninterrupted one (times are in results.csv).
TABLE_COLUMNS = [("best_top1", "best top-1"), ("final_top1", "final top-1"), ("final_train_loss", "final train loss"),
                 ("final_qe", "final QE")]
SPEC_KEYS = {"methods", "models", "seeds", "settings", "train", "results_dir"}
DONE = "done.json"


class RunFailedError(BnnkitError):
    """A run of the grid failed (exit status 1); the compare stops, keeping every finished run."""


@dataclass
class Job:
    method: str
    recipe: str | None
    model: str
    setting: dict[str, Any]
    seed: int
    folder: str

    @property
    def name(self) -> str:
        return os.path.basename(self.folder)

    @property
    def setting_label(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.setting.items())


# --- the spec ----------------------------------------------------------------------------------

def _as_list(spec: dict[str, Any], key: str) -> list[Any]:
    v = spec.get(key)
    if v is None:
        raise ConfigError(f"the compare spec has no {key!r}: give a list")
    return list(v) if isinstance(v, (list, tuple)) else [v]


def load_spec(path: str, overrides: dict[str, Any] | None = None,
              results_dir: str | None = None) -> tuple[list[Job], dict[str, Any], str]:
    """(the grid's runs in the order they run: model, method, setting, then seed innermost; the
    training keys every run gets; the compare's folder)."""
    from ..methods import all_options, get_method, list_methods
    from ..train import all_keys, find_recipe

    try:
        with open(path) as fh:
            spec = yaml.safe_load(fh)
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"compare spec {path}: {type(exc).__name__}: {str(exc).splitlines()[0]}") from None
    if not isinstance(spec, dict):
        raise ConfigError(f"compare spec {path}: a mapping of methods, models, seeds, settings, train")
    unknown = sorted(set(spec) - SPEC_KEYS)
    if unknown:
        raise ConfigError(f"compare spec {path}: unknown key {unknown[0]!r}; valid keys: {', '.join(sorted(SPEC_KEYS))}")
    methods = spec.get("methods")
    if methods == "all":
        methods = list_methods()
    recipes = dict(methods) if isinstance(methods, dict) else {m: None for m in _as_list(spec, "methods")}
    for m in recipes:
        get_method(str(m))  # unknown names: one error listing the valid ones
    # a recipe that does not exist fails now, not hours later when its run's turn comes; its
    # absolute path runs the same from any folder
    try:
        recipes = {m: str(find_recipe(str(r)).resolve()) if r is not None else None for m, r in recipes.items()}
    except BnnkitError as exc:
        raise ConfigError(f"compare spec {path}: {exc}") from None
    models = [str(m) for m in _as_list(spec, "models")]
    try:
        seeds = [int(s) for s in _as_list(spec, "seeds")]
    except (TypeError, ValueError):
        raise ConfigError(f"compare spec {path}: seeds must be integers") from None
    settings = spec.get("settings") or {}
    if not isinstance(settings, dict):
        raise ConfigError(f"compare spec {path}: settings is a mapping of key: [values]")
    train = {**(spec.get("train") or {}), **(overrides or {})}
    keys = all_keys()
    own = {m: {o.name for o in get_method(m).options} for m in recipes}
    for key in list(settings) + list(train):
        if key not in keys:
            raise ConfigError(f"compare spec {path}: {key!r} is not a training key; valid keys: {', '.join(keys)}")
    generic = set(keys) - set(all_options())  # keys no method owns: the trainer's
    for key in settings:
        lacking = [m for m in recipes if key not in generic and key not in own[m]]
        if lacking:
            raise ConfigError(f"compare spec {path}: setting {key!r} is not an option of {lacking[0]}: "
                              f"compare it in a spec of its own")
    for key in ("seed", "method", "model", "results_dir", "save", "resume"):
        if key in train or key in settings:
            raise ConfigError(f"compare spec {path}: {key!r} is set by the compare itself: drop it from the spec")
    root = results_dir or spec.get("results_dir") or os.path.join("runs", "compare",
                                                                   os.path.splitext(os.path.basename(path))[0])
    grid = [dict(zip(settings, values)) for values in itertools.product(*(_as_list(settings, k) for k in settings))]
    jobs = []
    for model, (method, recipe), setting, seed in itertools.product(models, recipes.items(), grid, seeds):
        parts = [method, model] + [f"{k}{v}" for k, v in setting.items()] + [f"seed{seed}"]
        name = re.sub(r"[^A-Za-z0-9_.-]+", "-", "_".join(map(str, parts)))
        jobs.append(Job(method, recipe, model, setting, seed, os.path.join(root, "runs", name)))
    return jobs, train, root


# --- running -----------------------------------------------------------------------------------

def _flags(values: dict[str, Any]) -> list[str]:
    """Training flags for the values (a flag beats the recipe in every stage); booleans as --set."""
    out = []
    for k, v in values.items():
        out += ["--set", f"{k}={json.dumps(v)}"] if isinstance(v, bool) or v is None else [f"--{k}", str(v)]
    return out


def _process_identity(pid: int) -> str | None:
    """pid and start time, from /proc where there is one; None for a process that is gone or a
    zombie (a killed trainer whose parent died stays one where the container's init reaps nothing)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
    except FileNotFoundError:
        return None
    except OSError:  # no /proc (macOS): a signal 0 says whether the pid exists
        try:
            os.kill(pid, 0)
        except OSError:
            return None
        return str(pid)
    state, start_time = fields[0], fields[19]
    return None if state in ("Z", "X") else f"{pid} {start_time}"


def _alive(pid_file: str) -> bool:
    """Whether the trainer that pid_file names still runs: the same pid and start time, so a pid
    the system has since given to another process does not count."""
    try:
        with open(pid_file) as fh:
            recorded = fh.read().strip()
        pid = int(recorded.split()[0])
    except (OSError, ValueError, IndexError):
        return False
    identity = _process_identity(pid)
    # without /proc on either side only the pid can be compared
    return identity is not None and (identity == recorded or " " not in recorded or " " not in identity)


def _drop_unstarted_stages(folder: str) -> None:
    """Remove the stage folders a kill left before their first checkpoint (holds_run: the trainer's own
    test of a folder that holds a run, best.pt alone included)."""
    from ..train import holds_run

    for name in os.listdir(folder):
        sub = os.path.join(folder, name)
        if os.path.isdir(sub) and os.path.isfile(os.path.join(sub, "config.yaml")) and not holds_run(sub):
            shutil.rmtree(sub)


def run_job(job: Job, train: dict[str, Any], log_dir: str, env: dict[str, str]) -> None:
    """Train one run to the end (resuming what an earlier compare left), then write its done.json."""
    pid_file = os.path.join(job.folder, ".compare.pid")
    if _alive(pid_file):
        raise ConfigError(f"{job.folder}: its trainer (pid in {pid_file}) still runs: wait for it or stop it")
    from ..train import holds_run

    resume = holds_run(job.folder)
    if os.path.isdir(job.folder) and not resume:  # killed before its first checkpoint: start it again
        shutil.rmtree(job.folder)
    elif resume:
        _drop_unstarted_stages(job.folder)
    cmd = [sys.executable, "-m", "bnnkit", "train", *([job.recipe] if job.recipe else []), "--method", job.method,
           "--model", job.model, "--seed", str(job.seed), *_flags({**train, **job.setting}),
           "--results_dir", os.path.dirname(job.folder), "--save", job.name, *(["--resume"] if resume else [])]
    os.makedirs(job.folder, exist_ok=True)
    os.makedirs(log_dir, exist_ok=True)
    log_path = os.path.join(log_dir, f"{job.name}.txt")
    with open(log_path, "a") as log:
        log.write(f"$ {' '.join(cmd)}\n")
        log.flush()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        with open(pid_file, "w") as fh:
            fh.write(_process_identity(proc.pid) or str(proc.pid))
        code = proc.wait()
    os.remove(pid_file)
    if code != 0:
        with open(log_path) as fh:
            errors = [l.strip() for l in fh if l.startswith("error:")]
        raise RunFailedError(f"{job.name} failed (exit {code}): {errors[-1] if errors else 'see ' + log_path}; "
                             f"fix it and rerun the same compare: finished runs are kept")
    row = result_row(job)
    tmp = os.path.join(job.folder, f".{DONE}.tmp")
    with open(tmp, "w") as fh:
        json.dump(row, fh)
    os.replace(tmp, os.path.join(job.folder, DONE))


def _images_per_epoch(stage_folder: str) -> int | None:
    """The training images of one epoch, from the line the trainer logs at a stage's start."""
    try:
        text = open(os.path.join(stage_folder, "log.txt")).read()
    except OSError:
        return None
    m = re.search(r"(\d+) process\(es\) on \w+, (\d+) training images per process", text)
    return int(m.group(1)) * int(m.group(2)) if m else None


def result_row(job: Job) -> dict[str, Any]:
    """results.csv's row for a finished run: accuracies and loss of its last stage, its epochs across
    stages, the seconds its epochs took (wall_s, resumes included) and images/s over them, and the
    summary of the trained model (deployed size, binary and real MACs)."""
    from ..train import model_from_checkpoint, read_checkpoint
    from .summary import summarize

    run = read_run(job.folder)
    last = run.stages[-1].rows[-1]
    wall = sum(t for s in run.stages for r in s.rows if not math.isnan(t := r.get("epoch_time_s", math.nan)))
    seen = 0
    for s in run.stages:
        n = _images_per_epoch(s.folder)
        seen = None if n is None or seen is None else seen + n * len(s.rows)
    ckpt_path = os.path.join(run.stages[-1].folder, "last.pt")
    summary = summarize(model_from_checkpoint(read_checkpoint(ckpt_path), ckpt_path))
    return {"method": job.method, "model": job.model, "setting": job.setting_label, "seed": job.seed, "run": job.name,
            "best_top1": last.get("best_top1"), "final_top1": last.get("val_top1"),
            "final_train_loss": last.get("train_loss"), "final_qe": _or_none(last.get("qe")), "epochs": sum(len(s.rows) for s in run.stages),
            "wall_s": round(wall, 3), "images_per_s": round(seen / wall, 1) if seen and wall > 0 else None,
            "size_bytes": int(summary.deployed_bytes), "bops": summary.binary_macs, "flops": summary.real_macs}


def _or_none(v: float | None) -> float | None:
    return None if v is None or math.isnan(v) else v


def run_all(jobs: list[Job], train: dict[str, Any], root: str, gpus: list[str]) -> None:
    """Every unfinished job, one at a time, or one per GPU at a time; the first failure stops the compare."""
    todo = [j for j in jobs if not os.path.isfile(os.path.join(j.folder, DONE))]
    for j in jobs:
        if j not in todo:
            print(f"{j.name}: finished earlier, kept", flush=True)
    failures: list[Exception] = []
    lock = threading.Lock()

    def worker(gpu: str | None) -> None:
        env = dict(os.environ)
        if gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = gpu
        while not failures:
            with lock:
                if not todo:
                    return
                job = todo.pop(0)
            print(f"{job.name}: training" + (f" on GPU {gpu}" if gpu is not None else ""), flush=True)
            started = time.time()
            try:
                run_job(job, train, os.path.join(root, "logs"), env)
            except (BnnkitError, OSError) as exc:
                failures.append(exc)
                return
            print(f"{job.name}: done in {time.time() - started:.0f}s", flush=True)

    if len(gpus) > 1:
        threads = [threading.Thread(target=worker, args=(g,)) for g in gpus]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    else:
        worker(gpus[0] if gpus else None)
    if failures:
        exc = failures[0]
        raise exc if isinstance(exc, BnnkitError) else RunFailedError(f"{exc}; rerun the same compare to continue")


# --- results -----------------------------------------------------------------------------------

def _mean_std(values: list[float]) -> str:
    values = [v for v in values if v not in (None, "") and not math.isnan(v)]
    if not values:
        return ""
    m = sum(values) / len(values)
    if len(values) == 1:
        return f"{m:.2f}"
    sd = math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))
    return f"{m:.2f} ± {sd:.2f}"


def table_rows(rows: list[dict[str, Any]]) -> list[list[str]]:
    """One line per method, model and setting (in the grid's order): mean ± std over its seeds."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["method"], r["model"], r["setting"]), []).append(r)
    out = []
    for (method, model, setting), members in groups.items():
        out.append([method, model, setting, str(len(members)), str(members[0]["epochs"])]
                   + [_mean_std([m[k] for m in members]) for k, _ in TABLE_COLUMNS])
    return out


def _header() -> list[str]:
    return ["method", "model", "setting", "seeds", "epochs"] + [label for _, label in TABLE_COLUMNS]


def write_results(jobs: list[Job], root: str, report: bool) -> list[dict[str, Any]]:
    from .plots import plot_runs

    rows = []
    for j in jobs:
        with open(os.path.join(j.folder, DONE)) as fh:
            rows.append(json.load(fh))
    with open(os.path.join(root, "results.csv"), "w", newline="") as fh:
        w = csv.DictWriter(fh, RESULT_COLUMNS)
        w.writeheader()
        w.writerows(rows)
    body = table_rows(rows)
    md = ["| " + " | ".join(_header()) + " |", "|" + "---|" * len(_header())]
    md += ["| " + " | ".join(line) + " |" for line in body]
    with open(os.path.join(root, "results.md"), "w") as fh:
        fh.write("\n".join(md) + "\n")
    figures = plot_runs([j.folder for j in jobs], os.path.join(root, "figures"))
    if report:
        write_report(os.path.join(root, "report.html"), body, figures)
    return rows


def write_report(path: str, body: list[list[str]], figures: list[str]) -> None:
    """One HTML file with the table and every figure inlined (data: URIs), to open or send as it is."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in _header())
    lines = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in line) + "</tr>" for line in body)
    imgs = []
    for f in figures:
        with open(f, "rb") as fh:
            data = base64.b64encode(fh.read()).decode()
        imgs.append(f'<figure><img alt="{html.escape(os.path.basename(f))}" src="data:image/png;base64,{data}">'
                    f"<figcaption>{html.escape(os.path.basename(f))}</figcaption></figure>")
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>bnnkit compare</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #999;
padding:4px 8px;text-align:right}}td:nth-child(-n+3){{text-align:left}}figure{{display:inline-block;margin:8px}}img{{max-width:640px}}</style></head>
<body><h1>bnnkit compare</h1><table><thead><tr>{head}</tr></thead><tbody>{lines}</tbody></table>
{''.join(imgs)}</body></html>
"""
    tmp = path + ".tmp"
    with open(tmp, "w") as fh:
        fh.write(page)
    os.replace(tmp, path)


def main(argv: list[str]) -> int:
    from ..train import parse_set

    p = ArgumentParser(prog="bnnkit compare", description="Train a grid of methods x models x settings x "
                                "seeds (one `bnnkit train` each, resumable), then results.csv, a mean ± std table "
                                "(results.md), overlay figures and, with --report, one HTML page.")
    p.add_argument("spec", help="compare spec YAML (recipes/compare/ has examples)")
    p.add_argument("--data_path", help="dataset root for every run (the same as --set data_path=DIR)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a training key for every run")
    p.add_argument("--results_dir", help="where the runs and tables go (default: the spec's, or runs/compare/NAME)")
    p.add_argument("--gpus", default="", help="comma-separated GPU ids: one run on each at a time")
    p.add_argument("--report", action="store_true", help="also write report.html (table and figures, self-contained)")
    a = p.parse_args(argv)
    overrides = parse_set(a.set)
    if a.data_path:
        overrides["data_path"] = a.data_path
    jobs, train, root = load_spec(a.spec, overrides, a.results_dir)
    os.makedirs(root, exist_ok=True)
    run_all(jobs, train, root, [g.strip() for g in a.gpus.split(",") if g.strip()])
    write_results(jobs, root, a.report)
    with open(os.path.join(root, "results.md")) as fh:
        print(fh.read(), end="")
    print(os.path.join(root, "report.html" if a.report else "results.csv"))
    return 0
