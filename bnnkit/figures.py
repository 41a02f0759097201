"""Figures of training runs, drawn from what a run folder holds (metrics.csv, config.yaml).

Read by the trainer at each epoch's end (its run's own figures) and by `bnnkit plot` / `compare`
(several runs on the same axes). It sits below train/ and analysis/ and imports nothing of bnnkit,
so both may call it. matplotlib is driven through its object API on the Agg canvas: no pyplot,
so no global figure state and no GUI backend, whatever the caller's environment.

A run is one folder with metrics.csv (one stage), or a folder whose subfolders each hold one (a
multi-stage run: its stages, in the order of their names, on one epoch axis). Which curves a
figure shows comes from the columns: the method's scheduled settings are the numeric columns that
are none of the trainer's own, so a new method's settings appear without any change here.
"""
from __future__ import annotations

import csv
import math
import os
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import yaml

# The trainer's own columns (bnnkit.train writes them; the rest of metrics.csv are the method's
# scheduled settings). qe and b: the quantisation error and mean |W| of a method that defines a QE.
TRAINER_COLUMNS = {"epoch", "lr", "train_loss", "train_top1", "train_top5", "val_loss", "val_top1", "val_top5",
                   "qe", "b", "flip_ratio", "best_top1", "epoch_time_s"}
FIGURE_DIR = "figures"


@dataclass
class Stage:
    name: str
    folder: str
    columns: list[str]
    rows: list[dict[str, float]]
    config: dict[str, Any]


@dataclass
class Run:
    """One run's stages, with each epoch placed on one axis: x = epochs of earlier stages + epoch + 1."""

    folder: str
    stages: list[Stage]
    label: str = ""

    @property
    def config(self) -> dict[str, Any]:
        return self.stages[0].config if self.stages else {}

    def columns(self) -> list[str]:
        out: list[str] = []
        for s in self.stages:
            out += [c for c in s.columns if c not in out]
        return out

    def series(self, column: str) -> tuple[list[float], list[float]]:
        xs, ys, offset = [], [], 0
        for s in self.stages:
            for r in s.rows:
                v = r.get(column, math.nan)
                if not math.isnan(v) and not math.isnan(r.get("epoch", math.nan)):
                    xs.append(offset + r["epoch"] + 1)
                    ys.append(v)
            offset += _stage_epochs(s)
        return xs, ys

    def boundaries(self) -> list[tuple[float, str]]:
        """(x where a stage starts, its name) for every stage after the first."""
        out, offset = [], 0
        for s in self.stages:
            if offset:
                out.append((offset, s.name))
            offset += _stage_epochs(s)
        return out


def _stage_epochs(s: Stage) -> int:
    """The epochs a stage spans on the axis: its configured count, else the last epoch it logged + 1."""
    e = s.config.get("epochs")
    if isinstance(e, int) and e > 0:
        return e
    return int(max((r["epoch"] for r in s.rows if not math.isnan(r.get("epoch", math.nan))), default=-1)) + 1


def _number(v: str) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def _read_stage(folder: str, name: str) -> Stage:
    with open(os.path.join(folder, "metrics.csv"), newline="") as fh:
        reader = csv.DictReader(fh)
        rows = [{k: _number(v) for k, v in r.items() if k is not None} for r in reader]
        columns = list(reader.fieldnames or [])
    config: dict[str, Any] = {}
    path = os.path.join(folder, "config.yaml")
    if os.path.isfile(path):
        with open(path) as fh:
            config = yaml.safe_load(fh) or {}
    return Stage(name, folder, columns, rows, config)


def _natural(name: str) -> list[Any]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def is_run(folder: str) -> bool:
    return os.path.isfile(os.path.join(folder, "metrics.csv")) or bool(_stage_folders(folder))


def _stage_folders(folder: str) -> list[str]:
    if not os.path.isdir(folder):
        return []
    subs = [d for d in os.listdir(folder) if os.path.isfile(os.path.join(folder, d, "metrics.csv"))]
    return sorted(subs, key=_natural)


def read_run(folder: str) -> Run:
    """The run in `folder` (ValueError where it holds none)."""
    if os.path.isfile(os.path.join(folder, "metrics.csv")):
        return Run(folder, [_read_stage(folder, os.path.basename(os.path.normpath(folder)))])
    subs = _stage_folders(folder)
    if not subs:
        raise ValueError(f"{folder} holds no run (no metrics.csv in it or in its stage folders)")
    return Run(folder, [_read_stage(os.path.join(folder, d), d) for d in subs])


# --- which figures ----------------------------------------------------------------------------

@dataclass
class Panel:
    """One figure: the curves (column, style) it draws, on one y axis."""

    name: str
    title: str
    ylabel: str
    curves: list[tuple[str, str, str]] = field(default_factory=list)  # (column, line label, line style)
    log_y: bool = False


def panels(columns: Iterable[str]) -> list[Panel]:
    """The figures the columns allow: loss, accuracy, learning rate, one per scheduled setting,
    flip ratio, QE. A figure with none of its columns present is left out."""
    cols = list(columns)
    has = set(cols)
    out = [Panel("loss", "Loss", "cross-entropy loss", [("train_loss", "train", "-"), ("val_loss", "val", "--")]),
           Panel("accuracy", "Top-1 and top-5 accuracy", "accuracy (%)",
                 [("train_top1", "train top-1", "-"), ("val_top1", "val top-1", "--"),
                  ("train_top5", "train top-5", ":"), ("val_top5", "val top-5", "-.")]),
           Panel("lr", "Learning rate", "learning rate", [("lr", "lr", "-")])]
    for c in cols:
        if c not in TRAINER_COLUMNS:
            out.append(Panel(f"setting_{re.sub(r'[^A-Za-z0-9_]+', '_', c)}", f"Scheduled setting: {c}", c,
                             [(c, c, "-")]))
    out += [Panel("flip_ratio", "Fraction of binary weights that flipped in the epoch", "flip ratio",
                  [("flip_ratio", "flip ratio", "-")]),
            Panel("qe", "Quantisation error (sum over binary layers)", "QE", [("qe", "QE", "-")])]
    for p in out:
        p.curves = [c for c in p.curves if c[0] in has]
    return [p for p in out if p.curves]


# --- drawing ---------------------------------------------------------------------------------

def _mean_band(runs: list[Run], column: str) -> tuple[list[float], list[float], list[float]]:
    """Mean and standard deviation over runs at each x any run has."""
    at: dict[float, list[float]] = {}
    for r in runs:
        for x, y in zip(*r.series(column)):
            at.setdefault(x, []).append(y)
    xs = sorted(at)
    means = [sum(at[x]) / len(at[x]) for x in xs]
    stds = [math.sqrt(sum((v - m) ** 2 for v in at[x]) / max(len(at[x]) - 1, 1)) for x, m in zip(xs, means)]
    return xs, means, stds


def _with_breaks(xs: list[float], ys: list[float], sd: list[float],
                 boundaries: list[tuple[float, str]]) -> tuple[list[float], list[float], list[float]]:
    """A NaN at each stage boundary, so that a line does not join one stage's last epoch to the next's first."""
    for b, _ in sorted(boundaries, reverse=True):
        i = next((i for i, x in enumerate(xs) if x > b), None)
        if i is not None and i > 0:
            xs, ys, sd = xs[:i] + [b + 0.5] + xs[i:], ys[:i] + [math.nan] + ys[i:], sd[:i] + [math.nan] + sd[i:]
    return xs, ys, sd


def save_png(fig: Any, path: str) -> None:
    """PNG written beside its final name, then renamed: a reader never sees half a file."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    tmp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.{os.getpid()}.tmp")
    try:
        fig.savefig(tmp, format="png", dpi=100)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def draw(groups: list[tuple[str, list[Run]]], out_dir: str) -> list[str]:
    """One PNG per panel in out_dir; each group is one legend entry: its run's curves, or with
    several runs (seeds) their mean and a band of one standard deviation. Returns the paths."""
    from matplotlib.figure import Figure

    os.makedirs(out_dir, exist_ok=True)
    columns: list[str] = []
    for _, runs in groups:
        for r in runs:
            columns += [c for c in r.columns() if c not in columns]
    colors = [f"C{i % 10}" for i in range(len(groups))]
    written = []
    for p in panels(columns):
        fig = Figure(figsize=(6.4, 4.0))
        ax = fig.add_subplot()
        for (label, runs), color in zip(groups, colors):
            for column, what, style in p.curves:
                xs, ys, sd = _with_breaks(*_mean_band(runs, column), runs[0].boundaries())
                if not xs:
                    continue
                name = ", ".join(t for t in (label, what if len(p.curves) > 1 else "") if t) or what
                if len(runs) > 1:
                    name += f" (mean of {len(runs)})"
                    ax.fill_between(xs, [m - s for m, s in zip(ys, sd)], [m + s for m, s in zip(ys, sd)],
                                    color=color, alpha=0.2, linewidth=0)
                ax.plot(xs, ys, style, color=color if len(groups) > 1 else None, marker="o" if len(xs) < 20 else None,
                        markersize=3, label=name)
        first = groups[0][1][0] if groups and groups[0][1] else None
        for x, stage in (first.boundaries() if first else []):
            ax.axvline(x + 0.5, color="0.5", linestyle=":", linewidth=1)
            ax.annotate(stage, (x + 0.5, 1.0), xycoords=("data", "axes fraction"), xytext=(3, -12),
                        textcoords="offset points", fontsize=8, color="0.3")
        ax.set_title(p.title)
        ax.set_xlabel("epoch")
        ax.set_ylabel(p.ylabel)
        ax.grid(True, alpha=0.3)
        entries = len(ax.get_legend_handles_labels()[1])
        if entries > 8:  # inside the axes so many entries would hide the curves: below them instead
            fig.set_size_inches(6.4, 4.0 + 0.16 * entries)
            ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14))
        elif entries:
            ax.legend(fontsize=8)
        fig.tight_layout()
        path = os.path.join(out_dir, f"{p.name}.png")
        save_png(fig, path)
        written.append(path)
    return written


def update_run_figures(run_dir: str, whole_run: str | None = None,
                       warn: Callable[[str], None] | None = None) -> list[str]:
    """Redraw a run folder's figures (run_dir/figures/*.png) and, for a stage of a multi-stage run,
    the whole run's (whole_run/figures/*.png, every stage on one axis). Never raises: training
    must not stop for a figure, so a failure becomes one warning."""
    written: list[str] = []
    for folder in (run_dir, whole_run):
        if folder is None:
            continue
        try:
            run = read_run(folder)
            written += draw([("", [run])], os.path.join(folder, FIGURE_DIR))
        except Exception as exc:  # noqa: BLE001 (any failure: a missing font, a full disk, a bad row)
            if warn is not None:
                warn(f"no figures for {folder}: {type(exc).__name__}: {exc}")
    return written
