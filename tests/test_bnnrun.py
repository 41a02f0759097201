"""bnnrun, the program built by `make runtime`: a model exported here, run by bnnrun in a clean
environment (no PYTHONPATH, no Python or torch in its process), its logits against PyTorch's;
--bench's report; bad input as one error line with nothing written; the engine switch of
deploy.load."""
from __future__ import annotations

import subprocess
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import bnnkit
from bnnkit import deploy

from .test_deploy_format import randomize

ROOT = Path(__file__).resolve().parents[1]
BNNRUN = ROOT / "build" / "runtime" / "bnnrun"
CLEAN_ENV = {"PATH": "/usr/bin:/bin"}  # no PYTHONPATH, LD_LIBRARY_PATH or virtual environment


def bnnrun(*args, **kw) -> subprocess.CompletedProcess:
    if not BNNRUN.is_file():
        pytest.fail(f"{BNNRUN} is missing; build it with `make runtime` (make test does)")
    return subprocess.run([str(BNNRUN), *map(str, args)], capture_output=True, text=True, env=CLEAN_ENV, timeout=300, **kw)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(model, .bnn path) of a random BiPer ResNet-20 (binary weights: stage 2)."""
    torch.manual_seed(0)
    model = randomize(bnnkit.create_model("resnet20_1w1a", method="biper", dataset="cifar10", stage=2), 0).eval()
    path = tmp_path_factory.mktemp("bnnrun") / "resnet20.bnn"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        deploy.export(model, path, example_input_shape=(1, 3, 32, 32))
    return model, path


def test_bnnrun_in_a_clean_environment_gives_pytorchs_logits(exported, tmp_path):
    model, path = exported
    x = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    np.save(tmp_path / "x.npy", x.numpy())
    r = bnnrun(path, tmp_path / "x.npy", "-o", tmp_path / "logits.npy", "--threads", "2")
    assert r.returncode == 0, r.stderr
    out = torch.from_numpy(np.load(tmp_path / "logits.npy"))
    with torch.no_grad():
        ref = model(x)
    assert out.shape == ref.shape == (5, 10)
    assert ((out - ref).abs().max() / ref.abs().max()).item() <= 1e-5
    assert torch.equal(out.argmax(1), ref.argmax(1))


def test_bnnrun_links_neither_python_nor_torch():
    libs = subprocess.run(["ldd", str(BNNRUN)], capture_output=True, text=True).stdout
    assert "libgomp" in libs or "libomp" in libs, libs  # ldd read it: the check below means something
    assert not any(name in libs for name in ("libpython", "libtorch", "libc10")), libs


def test_bnnrun_bench_reports_layers_and_end_to_end(exported):
    _, path = exported
    r = bnnrun("--bench", path, "--threads", "1", "--batch", "2", "--rounds", "3")
    assert r.returncode == 0, r.stderr
    rows = [line.split() for line in r.stdout.splitlines()]
    ops = {row[1] for row in rows if len(row) == 4 and row[3].endswith("%")}
    assert {"bconv", "conv", "linear"} <= ops, r.stdout
    assert "end-to-end: median" in r.stdout and "images/s" in r.stdout


@pytest.mark.parametrize("case", ["missing model", "corrupt model", "wrong input shape", "not an npy"])
def test_bnnrun_bad_input_is_one_line_and_writes_nothing(exported, tmp_path, case):
    _, path = exported
    x = tmp_path / "x.npy"
    np.save(x, np.zeros((1, 3, 32, 32), np.float32))
    if case == "missing model":
        path = tmp_path / "none.bnn"
    elif case == "corrupt model":
        raw = bytearray(path.read_bytes())
        raw[-100] ^= 0xFF  # a tensor byte: its checksum no longer holds
        path = tmp_path / "corrupt.bnn"
        path.write_bytes(bytes(raw))
    elif case == "wrong input shape":
        np.save(x, np.zeros((1, 3, 28, 28), np.float32))
    else:
        x.write_bytes(b"not a numpy file")
    out = tmp_path / "logits.npy"
    out.write_bytes(b"previous")
    r = bnnrun(path, x, "-o", out)
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "error" in lines[0], r.stderr
    assert out.read_bytes() == b"previous"


def test_deploy_load_engines(exported):
    model, path = exported
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
    for engine in deploy.ENGINES:
        out = deploy.load(path, engine=engine)(x)
        assert ((out - ref).abs().max() / ref.abs().max()).item() <= 1e-5, engine
    with pytest.raises(ValueError, match="unknown engine 'onnx'; choose one of python, libbnn"):
        deploy.load(path, engine="onnx")


@pytest.mark.parametrize("C, O, k, stride, pad, size", [(3, 16, 3, 1, 1, 32), (3, 64, 7, 2, 3, 64), (64, 128, 1, 2, 0, 28),
                                                        (192, 64, 1, 1, 0, 14)])
def test_stem_and_narrow_1x1_convs_round_as_pytorch(tmp_path, C, O, k, stride, pad, size):
    """libbnn sums a first conv tap by tap and a 1x1 conv of up to 192 channels channel by channel,
    one fma each, as oneDNN does (docs/deploy.md, "Same logits as PyTorch"): float32 results within a
    few ulps of the products' magnitude of PyTorch's, and here the same bits (printed, not asserted:
    oneDNN's order is its own choice per instruction set)."""
    torch.manual_seed(0)
    conv = torch.nn.Sequential(torch.nn.Conv2d(C, O, k, stride, pad, bias=False)).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        deploy.export(conv, tmp_path / "c.bnn", example_input_shape=(1, C, size, size))
    x = torch.randn(2, C, size, size)
    with torch.no_grad():
        ref = conv(x)
    out = deploy.load(tmp_path / "c.bnn", engine="libbnn")(x)
    scale = torch.nn.functional.conv2d(x.abs(), conv[0].weight.abs(), None, stride, pad)  # sum of |products|
    assert ((out - ref).abs() <= 16 * torch.finfo(torch.float32).eps * scale + 1e-30).all()
    print(f"{int((out != ref).sum())} of {ref.numel()} values differ from PyTorch's")
