"""libbnn on .bnn files that are consistent (checksums recomputed) but describe graphs it must
refuse: each must fail with one clear error line from bnnrun, never a crash. Each case is an input
that crashed or overflowed in libbnn before (found while fuzzing it, scripts/fuzz_libbnn.sh)."""
from __future__ import annotations

import hashlib
import importlib.util
import json
import struct
import subprocess
import warnings
from pathlib import Path

import pytest
import torch

from bnnkit import deploy

ROOT = Path(__file__).resolve().parents[1]
BNNRUN = ROOT / "build" / "runtime" / "bnnrun"
BIG = 2**63 - 1


def _tiny_model() -> torch.nn.Module:
    spec = importlib.util.spec_from_file_location("make_corpus", ROOT / "runtime" / "fuzz" / "make_corpus.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    torch.manual_seed(0)
    return module.Tiny().eval()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    if not BNNRUN.is_file():
        subprocess.run(["make", "runtime"], cwd=ROOT, check=True, capture_output=True)
    path = tmp_path_factory.mktemp("libbnn") / "tiny.bnn"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        deploy.export(_tiny_model(), path, example_input_shape=(2, 3, 6, 6))
    return path


def rewrite(src: Path, dst: Path, edit) -> Path:
    """dst: src with edit(graph, header) applied and its checksums recomputed."""
    raw = src.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header, data = json.loads(raw[8:8 + n]), raw[8 + n:]
    meta = header.pop("__metadata__")
    graph = json.loads(meta["graph"])
    edit(graph, header)
    graph["digests"] = {k: hashlib.sha256(data[v["data_offsets"][0]:v["data_offsets"][1]]).hexdigest()
                        for k, v in header.items()}
    meta["graph"] = json.dumps(graph, separators=(",", ":"))
    meta["graph_sha256"] = hashlib.sha256(meta["graph"].encode()).hexdigest()
    text = json.dumps({"__metadata__": meta, **header}).encode()
    dst.write_bytes(struct.pack("<Q", len(text)) + text + data)
    return dst


def node(graph: dict, name: str) -> dict:
    return next(n for n in graph["nodes"] if n["name"] == name)


def insert_after(graph: dict, after: str, new: dict, consumer: str) -> None:
    """new goes right after node `after` and replaces `after` as `consumer`'s first input."""
    nodes = graph["nodes"]
    nodes.insert(nodes.index(node(graph, after)) + 1, new)
    node(graph, consumer)["args"][0] = {"ref": new["name"]}


def empty_slice(name: str, src: str, rank: int) -> dict:
    """src[..., 0:0]: a tensor with no elements."""
    full = {"slice": [None, None, None]}
    return {"name": name, "op": "call", "args": [{"ref": src}, {"tuple": [full] * (rank - 1) + [{"slice": [0, 0, None]}]}],
            "kwargs": {}, "attrs": {"fn": "operator.getitem"}}


def empty_pool_input(g, h):
    insert_after(g, "act", empty_slice("empty", "act", 4), "adaptive_avg_pool2d")


def empty_max_pool_input(g, h):
    insert_after(g, "conv1", empty_slice("empty", "conv1", 4), "max_pool2d")
    node(g, "max_pool2d")["kwargs"]["padding"] = 1  # an output of 1x1 windows over nothing


def empty_linear(g, h):
    insert_after(g, "view", empty_slice("empty", "view", 2), "fc")
    w = h[node(g, "fc")["tensors"]["weight"]]
    w["shape"], w["data_offsets"] = [4, 0], [w["data_offsets"][0]] * 2


def huge_slice_step(g, h):
    node(g, "getitem_1")["args"][1]["tuple"][2] = {"slice": [None, None, BIG]}


def huge_pad(g, h):
    node(g, "pad")["args"][1] = {"tuple": [0, BIG, 0, 0]}


def huge_pool_padding(g, h):
    node(g, "max_pool2d")["kwargs"].update(padding=BIG, stride=BIG)


def newline_in_message(g, h):
    node(g, "hardtanh")["attrs"]["fn"] = "F.evil\nsecond line"


def scalar(name: str, src: str) -> dict:
    """torch.mean(src): a tensor of 0 dimensions."""
    return {"name": name, "op": "call", "args": [{"ref": src}], "kwargs": {}, "attrs": {"fn": "torch.mean"}}


def size_of_scalar(g, h):
    insert_after(g, "act", scalar("scalar", "act"), "size")


def cat_of_scalars(g, h):
    insert_after(g, "getitem_2", scalar("scalar", "getitem_2"), "cat")
    node(g, "cat")["args"][0] = {"list": [{"ref": "scalar"}, {"ref": "scalar"}]}
    node(g, "cat")["args"][1] = 0


def transpose_of_scalar(g, h):
    insert_after(g, "act", scalar("scalar", "act"), "size")
    node(g, "size")["attrs"]["method"], node(g, "size")["args"] = "transpose", [{"ref": "scalar"}, 0, 0]


def mean_of_scalar(g, h):
    insert_after(g, "act", scalar("scalar", "act"), "size")
    node(g, "size")["attrs"]["method"], node(g, "size")["args"] = "mean", [{"ref": "scalar"}, 0]


CASES = {
    "size_of_scalar": (size_of_scalar, "size"),
    "cat_of_scalars": (cat_of_scalars, "cat"),
    "transpose_of_scalar": (transpose_of_scalar, "size"),
    "mean_of_scalar": (mean_of_scalar, "size"),
    "empty_pool_input": (empty_pool_input, "adaptive_avg_pool2d"),
    "empty_max_pool_input": (empty_max_pool_input, "max_pool2d"),
    "empty_linear": (empty_linear, "fc"),
    "huge_slice_step": (huge_slice_step, None),
    "huge_pad": (huge_pad, "pad"),
    "huge_pool_padding": (huge_pool_padding, "max_pool2d"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_graph_is_one_error_line(tiny: Path, tmp_path: Path, case: str) -> None:
    edit, names = CASES[case]
    bad = rewrite(tiny, tmp_path / f"{case}.bnn", edit)
    r = subprocess.run([str(BNNRUN), "--bench", str(bad)], capture_output=True, text=True, timeout=120)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1, (r.returncode, r.stderr[-2000:])
    assert len(lines) == 1 and "error:" in lines[0] and str(bad) in lines[0], r.stderr
    if names:
        assert f"'{names}'" in lines[0] or f"'empty'" in lines[0], lines[0]


def test_library_error_is_one_line(tiny: Path, tmp_path: Path) -> None:
    """bnn_last_error itself (not only bnnrun's output) is one line when the file's strings hold
    newlines or other control characters."""
    from bnnkit.deploy._errors import DeployFormatError
    from bnnkit.deploy._libbnn import LibbnnRuntime
    bad = rewrite(tiny, tmp_path / "newline.bnn", newline_in_message)
    with pytest.raises(DeployFormatError) as e:
        LibbnnRuntime(bad)
    message = str(e.value)
    assert "'hardtanh'" in message and "F.evil" in message and "second line" in message, message
    assert not any(ord(c) < 0x20 for c in message), repr(message)


def test_rewrite_keeps_a_good_file_loadable(tiny: Path, tmp_path: Path) -> None:
    """The helper itself: an edit that changes nothing gives a file libbnn runs."""
    ok = rewrite(tiny, tmp_path / "same.bnn", lambda g, h: None)
    r = subprocess.run([str(BNNRUN), "--bench", str(ok)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
