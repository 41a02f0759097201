"""Helpers shared by the training and CLI tests: the local CIFAR-10 copy and tiny real runs."""
from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CIFAR = ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"
PYTHON = sys.executable

# A tiny but real run: ResNet-20 on 256 training and 256 validation images of CIFAR-10.
TINY = ["--data_path", str(CIFAR), "--model", "resnet20_1w1a", "--subset", "128", "--val_subset", "128",
        "-b", "64", "-bt", "128", "--workers", "1", "--threads", "1", "--print_freq", "1", "--set", "tensorboard=false"]


def cli(*argv: str) -> tuple[int, str, str]:
    """Run `bnnkit ARGV` in this process; (exit status, stdout, stderr)."""
    from bnnkit.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


def env(**extra: str) -> dict[str, str]:
    e = dict(os.environ)
    e["PYTHONPATH"] = str(ROOT) + (os.pathsep + e["PYTHONPATH"] if e.get("PYTHONPATH") else "")
    e.update({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}, **extra)
    return e


def cli_subprocess(*argv: str, timeout: float = 300, **extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([PYTHON, "-m", "bnnkit", *[str(a) for a in argv]], cwd=ROOT, env=env(**extra),
                          capture_output=True, text=True, timeout=timeout)


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """(size, mtime_ns) of every file under folder, to prove nothing was rewritten."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def one_error(err: str, *needles: str) -> str:
    """The only error line of a command's stderr, holding every needle; no traceback, and no
    other line that mentions an error (argparse's `PROG: error:`, a usage block)."""
    assert "Traceback" not in err and "usage:" not in err, err
    errors = [l for l in err.splitlines() if l.startswith("error:")]
    assert len(errors) == 1 and sum("error" in l for l in err.splitlines()) == 1, err
    for n in needles:
        assert n in errors[0], errors[0]
    return errors[0]
