"""Every flag of the main commands with bad values: one `error:` line, a non-zero exit, no
traceback, nothing written.

The flags come from the commands' own parsers (captured as each command builds it), so a new flag
is walked without editing this file: a typed flag gets the bad values of its type, a flag with
choices an unknown choice; a flag of neither kind must be listed in STRINGS with its bad values
or the reason it has none, or the walk fails. Everything runs in this process and stops before
any expensive work: a value that gets past the checks reaches a guard (the data loading, the
benchmark) that fails the case as accepted.
"""
from __future__ import annotations

import argparse
import contextlib
import io

import pytest
import torch

import bnnkit
import bnnkit._command as command
from bnnkit.cli import main
from bnnkit.methods import all_aliases, all_options, get_method, list_methods
from tests._train_fixtures import CIFAR

COMMANDS = ("train", "eval", "qe", "export", "summary", "bench", "bench-deploy")
MISSING = "/nonexistent/bnnkit-walk/x.pt"
NO_VALUE = "-"  # STRINGS: a flag for which no value is wrong (the reason follows)

# Flags without a type or choices: their bad values, or NO_VALUE and why none is bad.
STRINGS = {
    "train": {
        "recipe": ["no_such_recipe"], "method": ["nosuch"], "model": ["nosuch"], "dataset": ["nosuch"],
        "data_path": [MISSING], "lr_type": ["nosuch"], "optimizer": ["nosuch"], "loss": ["nosuch"],
        "teacher": ["nosuch", MISSING], "teacher_weights": [MISSING], "start_from": [MISSING],
        "backend": ["nosuch"], "gpus": ["x", "-1"], "results_dir": ["FILE"], "resume": [MISSING],
        "amp": ["nosuch"], "device": ["nosuch"], "cache_dir": ["FILE"], "authors_torch": ["nosuch"],
        "sort": (NO_VALUE, "SiMaN's sort: 'quick' picks the sort branch, any other word the median branch"),
        "save": (NO_VALUE, "any folder name under --results_dir"),
        "load_ckpt_stage1": [MISSING], "evaluate": [MISSING], "set": ["x", "nosuch=1"],
        "type": (NO_VALUE, "the authors' tensor type flag, accepted and ignored"),
        "time_estimate": (NO_VALUE, "the authors' flag, accepted and ignored (bnnkit always estimates)"),
    },
    "eval": {"checkpoint": [MISSING], "model": ["nosuch"], "method": ["nosuch"], "dataset": ["nosuch"],
             "data_path": [MISSING], "cache_dir": ["FILE"]},
    "qe": {"checkpoint": [MISSING], "model": ["nosuch"], "method": ["nosuch"], "dataset": ["nosuch"]},
    "export": {"checkpoint": [MISSING], "output": ["/nonexistent/bnnkit-walk/m.bnn", "CKPT"], "method": ["nosuch"],
               "model": ["nosuch"], "dataset": ["nosuch"]},
    "summary": {"model": ["nosuch"], "method": ["nosuch"], "dataset": ["nosuch"]},
    "bench": {"models": ["nosuch"], "device": ["nosuch"]},
    "bench-deploy": {"checkpoint": [MISSING], "model": ["nosuch"], "method": ["nosuch"], "dataset": ["nosuch"],
                     "threads": ["x", "0", "-1"], "batch": ["x", "0", "-1"], "isa": ["nosuch"],
                     "json": ["/nonexistent/bnnkit-walk/r.json"]},
}
# Typed flags for which zero, or a negative number, is a valid value.
ZERO_OK = {
    "train": {"seed", "workers", "checkpoint_every", "checkpoint_minutes", "weight_decay", "momentum",
              "lr",  # a frozen run (lr 0) is a valid run
              "tau", "tau_min", "tau_max"},  # BiPer: regulariser weight 0 switches it off
    "eval": {"workers"},
    "bench": {"warmup", "percent"},
    "bench-deploy": {"seed", "min-time"},
}
NEGATIVE_OK: dict[str, set[str]] = {}
# Typed flags whose type takes no number (a shape, a boolean): their bad values.
OTHER_TYPES = {"input-shape": ["x", "1,3,32", "0,3,32,32"], "lr_decay_step": ["x", "10,x"]}


def _bad_values(cmd: str, action: argparse.Action) -> list[str] | None:
    """The bad values to try for one flag; None where it takes no value."""
    name = (action.option_strings[-1].lstrip("-") if action.option_strings else action.dest)
    if action.nargs == 0:
        return None  # a switch: there is no value to get wrong
    if action.choices is not None:
        return ["nosuch"]
    kind = getattr(action.type, "bnnkit_kind", action.type)
    if kind in (int, float):
        bad = ["x", "nan", "inf", "1.5"] if kind is int else ["x", "nan", "inf"]
        if name not in NEGATIVE_OK.get(cmd, set()):
            bad.append("-1")
        if name not in ZERO_OK.get(cmd, set()):
            bad.append("0")
        return bad
    if kind is bool:
        return ["maybe"]
    if name in OTHER_TYPES:
        return OTHER_TYPES[name]
    listed = STRINGS.get(cmd, {}).get(action.dest, STRINGS.get(cmd, {}).get(name))
    assert listed is not None, (f"bnnkit {cmd} {name}: a flag without a type or choices; give it one, or list its "
                                f"bad values (or why it has none) in STRINGS")
    return None if listed[0] == NO_VALUE else listed


class Captured(Exception):
    pass


class Accepted(Exception):
    """A bad value got past every check to the expensive work."""


def parser_of(cmd: str) -> argparse.ArgumentParser:
    real = command.ArgumentParser.parse_args

    def capture(self, *a, **k):
        raise Captured(self)
    command.ArgumentParser.parse_args = capture
    try:
        main([cmd])
    except Captured as c:
        return c.args[0]
    finally:
        command.ArgumentParser.parse_args = real
    raise AssertionError(f"bnnkit {cmd} built no bnnkit._command.ArgumentParser")


def _owner(flag: str) -> str | None:
    """The method a method's option or an authors' alias belongs to (so that the flag is taken)."""
    for alias in all_aliases():
        if alias == flag:
            return next(m for m in list_methods() if alias in get_method(m).aliases)
    owners = all_options().get(flag)
    return owners[0][0].name if owners else None


def cases():
    out = []
    for cmd in COMMANDS:
        for action in parser_of(cmd)._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            for value in _bad_values(cmd, action) or []:
                out.append(pytest.param(cmd, action.option_strings[-1] if action.option_strings else action.dest,
                                        value, id=f"{cmd}-{action.option_strings[-1] if action.option_strings else action.dest}={value}"))
    return out


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """A bnnkit checkpoint of a random ResNet-20 (BiPer stage 2: every rebuild flag means something)."""
    path = tmp_path_factory.mktemp("walk") / "r20.pt"
    torch.manual_seed(0)
    model = bnnkit.create_model("resnet20_1w1a", method="siman")
    torch.save({"format": "bnnkit-checkpoint", "version": 1, "spec": model.bnnkit_spec, "epoch": 0, "config": {},
                "state_dict": model.state_dict()}, path)
    return path


def base_argv(cmd: str, flag: str, ckpt, out) -> list[str]:
    owner = _owner(flag.lstrip("-"))
    method = ["--method", owner] if owner and flag != "--method" else []
    if cmd == "train":
        return ["--model", "resnet20_1w1a", "--data_path", str(CIFAR), "--epochs", "1", "--subset", "32",
                "--val_subset", "32", "--results_dir", str(out), "--save", "x", *method]
    if cmd == "eval":
        return [str(ckpt), "--data_path", str(CIFAR)]
    if cmd == "qe":
        return [str(ckpt)]
    if cmd == "export":
        return [str(ckpt), "-o", str(out / "m.bnn")]
    if cmd == "summary":
        return ["resnet20_1w1a"]
    if cmd == "bench":
        return ["--models", "resnet20_1w1a", "--methods", "siman"]
    return ["--model", "resnet20_1w1a", "--dataset", "cifar10", *method]


def with_value(argv: list[str], action_name: str, value: str) -> list[str]:
    if action_name.startswith("-"):
        return [*argv, action_name, value] if not value.startswith("-") else [*argv, f"{action_name}={value}"]
    positional = {"recipe": [value, *argv], "model": [value], "checkpoint": [value, *argv[1:]]}
    return positional[action_name]


@pytest.fixture
def guarded(monkeypatch, tmp_path):
    """The expensive steps replaced by Accepted; the cwd an empty folder."""
    import bnnkit.analysis.bench as bench
    import bnnkit.deploy._bench as deploy_bench
    import bnnkit.train._evaluate as evaluate
    import bnnkit.train._main as train_main
    from bnnkit.train import _data

    def accepted(*a, **k):
        raise Accepted()

    def data_check_only(cfg, *a, **k):  # the data flags: the real checks of the path, not the decoding
        if cfg.get("data_path") != str(CIFAR) or cfg.get("cache_dir"):
            return _data.load_data(cfg, *a, **k)
        raise Accepted()
    for module in (train_main, evaluate):
        monkeypatch.setattr(module, "load_data", data_check_only)
    monkeypatch.setattr(bench, "matmul_gflops", accepted)
    monkeypatch.setattr(deploy_bench, "run_bench", accepted)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    return work


@pytest.mark.parametrize("cmd, flag, value", cases())
def test_bad_value(cmd, flag, value, ckpt, guarded, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (tmp_path / "a_file").write_text("not a folder")
    value = {"FILE": str(tmp_path / "a_file"), "CKPT": str(ckpt)}.get(value, value)
    argv = with_value(base_argv(cmd, flag, ckpt, out), flag, value)
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            code = main([cmd, *argv])
        except Accepted:
            code = None
    err = stderr.getvalue()
    assert code is not None, f"bnnkit {cmd} {flag} {value} was accepted"
    assert code in (1, 2), (code, err)
    assert "Traceback" not in err and "usage:" not in err, err
    lines = [l for l in err.splitlines() if l.startswith("error:")]
    assert len(lines) == 1 and sum("error" in l for l in err.splitlines()) == 1, err
    name = flag.lstrip("-")
    assert name in lines[0] or value in lines[0] or name.replace("-", "_") in lines[0], lines[0]
    assert list(out.iterdir()) == [] and list(guarded.iterdir()) == [], "the refused command wrote files"
