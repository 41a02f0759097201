"""`bnnkit plot RUN [RUN ...] -o DIR`: several runs on the same axes, one figure per metric.

The legend says what sets the runs apart: the config keys whose values differ between them (keys
only some runs have come with their method and say nothing more than `method` does; where the
runs are stored, how they log and how many threads they used are not differences). Runs that
differ only by their seed are one entry: their mean, with a band of one standard deviation.
"""
from __future__ import annotations

import os
from typing import Any

from .._command import ArgumentParser
from ..errors import ConfigError
from ..figures import Run, draw, read_run

# Keys that say where and how a run was stored or executed, not what it trained.
NOT_A_DIFFERENCE = {"run_dir", "save", "results_dir", "explicit", "resume", "start_from", "tensorboard", "figures",
                    "print_freq", "workers", "threads", "device", "cache_dir", "log_samples", "checkpoint_every",
                    "checkpoint_minutes", "gpus", "download"}
SEED = "seed"


def run_config(run: Run) -> dict[str, Any]:
    """A run's settings as one flat dict: a key whose value differs between stages as STAGE.KEY."""
    configs = [s.config for s in run.stages]
    keys = [k for c in configs for k in c]
    out: dict[str, Any] = {}
    for k in dict.fromkeys(keys):
        if k in NOT_A_DIFFERENCE:
            continue
        values = [c.get(k) for c in configs]
        if all(v == values[0] for v in values):
            out[k] = values[0]
        else:
            out.update({f"{s.name}.{k}": v for s, v in zip(run.stages, values)})
    return out


def differing_keys(configs: list[dict[str, Any]]) -> list[str]:
    """The keys every config has whose values are not all the same, in the first config's order."""
    if len(configs) < 2:
        return []
    common = [k for k in configs[0] if all(k in c for c in configs[1:])]
    return [k for k in common if any(c[k] != configs[0][k] for c in configs[1:])]


def _label(config: dict[str, Any], keys: list[str]) -> str:
    return ", ".join(f"{k}={config[k]}" for k in keys)


def group_runs(runs: list[Run]) -> list[tuple[str, list[Run]]]:
    """(legend label, runs) per legend entry: runs whose configs differ only by seed share one."""
    configs = [run_config(r) for r in runs]
    keys = differing_keys(configs)
    if not keys and len(runs) > 1:  # the same settings twice: only the folders tell them apart
        return [(os.path.basename(os.path.normpath(r.folder)), [r]) for r in runs]
    apart = [k for k in keys if k != SEED]
    groups: dict[str, list[Run]] = {}
    for run, cfg in zip(runs, configs):
        groups.setdefault(_label(cfg, apart), []).append(run)
    return list(groups.items())


def read_runs(folders: list[str]) -> list[Run]:
    runs = []
    for f in folders:
        try:
            runs.append(read_run(f))
        except (ValueError, OSError) as exc:
            raise ConfigError(f"{f}: not a run folder ({exc}): pass folders that `bnnkit train` wrote") from None
    return runs


def plot_runs(folders: list[str], out_dir: str) -> list[str]:
    """Draw the runs in `folders` into out_dir; returns the PNGs written."""
    return draw(group_runs(read_runs(folders)), out_dir)


def main(argv: list[str]) -> int:
    p = ArgumentParser(prog="bnnkit plot", description="Overlay training runs: loss, accuracy, learning "
                                "rate, scheduled settings, flip ratio and QE, one PNG each; the legend names what "
                                "differs between the runs' configs, and runs differing only by seed become a mean "
                                "with a band of one standard deviation.")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run folders (a multi-stage run's top folder or a stage's)")
    p.add_argument("-o", "--out", required=True, metavar="DIR", help="folder for the PNGs")
    a = p.parse_args(argv)
    for path in plot_runs(a.runs, a.out):
        print(path)
    return 0
