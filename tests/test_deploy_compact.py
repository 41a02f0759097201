"""Compact .bnn files (`bnnkit export --compact`): real layers' weights int8 per output channel,
float16 where int8 is not enough (docs/deploy_format.md). The trained model is
tests/fixtures/siman_resnet20_cifar10_trained.bnn (scripts/make_compact_fixture.py), a plain file
compacted here with the exporter's own compact_weights, on a file's graph and tensors."""
from pathlib import Path

import pytest
import torch

import bnnkit
from bnnkit import deploy
from bnnkit.deploy import DeployFormatError
from bnnkit.deploy._export import (FLOAT16_MAX_RELATIVE_ERROR, INT8_MAX_RELATIVE_ERROR, channel_error,
                                   compact_weights, dequantize_int8, int8_per_channel)
from bnnkit.deploy._format import read, write
from bnnkit.methods import get_method

from .test_deploy_models import cifar_1000  # noqa: F401  (the fixture: 100 test images of each class)

TRAINED = Path(__file__).parent / "fixtures" / "siman_resnet20_cifar10_trained.bnn"


def compacted(src: Path, dst: Path, **options) -> dict[str, int]:
    graph, tensors = read(src)
    counts = compact_weights(graph, tensors, **options)
    write(dst, graph, tensors)
    return counts


def real_nodes(graph: dict) -> list[dict]:
    return [n for n in graph["nodes"] if n["op"] in ("conv", "linear")]


def logits(net, images: torch.Tensor) -> torch.Tensor:
    return torch.cat([net(chunk) for chunk in images.split(250)])


@pytest.fixture(scope="module")
def trained_compact(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("compact") / "trained_compact.bnn"
    assert compacted(TRAINED, path) == {"int8": 1, "float16": 1}  # the classifier int8, the stem float16
    return path


# ---- what is stored how ---------------------------------------------------------------------
def test_int8_is_per_channel_symmetric_rounding():
    w = torch.randn(6, 5, 3, 3) * torch.tensor([1e-3, 1e-1, 1.0, 10.0, 1e3, 0.0]).view(6, 1, 1, 1)
    q, scale = int8_per_channel(w)
    assert q.dtype == torch.int8 and scale.dtype == torch.float32 and scale.shape == (6,)
    rows, qrows = w.reshape(6, -1), q.reshape(6, -1).int()
    assert torch.equal(qrows.abs().amax(1)[:5], torch.full((5,), 127, dtype=torch.int32))  # the peak uses all 127 levels
    assert torch.equal(scale[:5], rows.abs().amax(1)[:5] / 127)
    assert not qrows[5].any()  # an all-zero channel stays exactly 0
    back = dequantize_int8(q, scale)
    assert torch.equal(back, q.float() * scale.view(6, 1, 1, 1))
    assert bool(((back - w).abs() <= scale.view(6, 1, 1, 1) / 2 * (1 + 1e-6)).all())  # nearest level
    assert int8_per_channel(torch.tensor([[1.0, float("nan")]])) is None
    assert int8_per_channel(torch.tensor([[1e-43, -1e-43]])) is None  # a subnormal scale


def synthetic_graph(weights: dict[str, torch.Tensor]) -> tuple[dict, dict]:
    """input -> the named convs / linears in a chain (the first conv reads the input: the stem)."""
    nodes, tensors, prev = [{"name": "x", "op": "input", "args": [], "tensors": {}}], {}, "x"
    for name, w in weights.items():
        nodes.append({"name": name, "op": "conv" if w.dim() == 4 else "linear", "args": [{"ref": prev}],
                      "tensors": {"weight": f"{name}.weight"}})
        tensors[f"{name}.weight"] = w
        prev = name
    return {"nodes": nodes}, tensors


def test_int8_or_float16_choice():
    g = torch.Generator().manual_seed(0)
    outlier = torch.randn(8, 64, 3, 3, generator=g)
    outlier[5, 10, 1, 1] = 40.0  # one weight sets channel 5's step: its other weights get few levels
    laplace = torch.distributions.Laplace(0.0, 1.0).icdf(torch.rand(64, 1152, generator=g))  # heavy-tailed, ordinary
    tiny = outlier.flatten(1) * 1e-6  # the same outlier, at a scale where float16 is subnormal: neither fits
    graph, tensors = synthetic_graph({"stem": torch.randn(16, 3, 3, 3, generator=g),
                                      "plain": torch.randn(32, 16, 3, 3, generator=g),
                                      "outlier": outlier, "laplace": laplace, "tiny": tiny})
    original = dict(tensors)
    assert channel_error(outlier, dequantize_int8(*int8_per_channel(outlier))) > INT8_MAX_RELATIVE_ERROR
    assert 0.01 < channel_error(laplace, dequantize_int8(*int8_per_channel(laplace))) <= INT8_MAX_RELATIVE_ERROR
    assert compact_weights(graph, tensors) == {"int8": 2, "float16": 2}
    assert graph["compact"] is True
    kinds = {n["name"]: (tensors[n["tensors"]["weight"]].dtype, "weight_scale" in n["tensors"]) for n in real_nodes(graph)}
    assert kinds == {"stem": (torch.float16, False), "plain": (torch.int8, True), "outlier": (torch.float16, False),
                     "laplace": (torch.int8, True), "tiny": (torch.float32, False)}
    for name in ("plain", "laplace"):
        q, scale = tensors[f"{name}.weight"], tensors[f"{name}.weight_scale"]
        assert scale.dtype == torch.float32 and scale.shape == (q.shape[0],)
        assert channel_error(original[f"{name}.weight"], dequantize_int8(q, scale)) <= INT8_MAX_RELATIVE_ERROR
    assert channel_error(outlier, tensors["outlier.weight"].float()) <= FLOAT16_MAX_RELATIVE_ERROR
    # the stem goes int8 too when asked (stem_float16=False), and a graph without real layers is left unmarked
    graph, tensors = synthetic_graph({"stem": torch.randn(16, 3, 3, 3, generator=g)})
    assert compact_weights(graph, tensors, stem_float16=False) == {"int8": 1, "float16": 0}
    graph, tensors = synthetic_graph({})
    assert compact_weights(graph, tensors) == {"int8": 0, "float16": 0} and "compact" not in graph


def test_compact_file_runs_the_dequantized_weights(trained_compact, tmp_path):
    """The runtime on the compact file computes exactly what it computes on a float32 file that
    holds float32(q) * scale and the float16 weights widened: nothing else changes."""
    graph, tensors = read(trained_compact)
    plain_graph, plain_tensors = read(TRAINED)
    for node in real_nodes(graph):
        w, name = tensors[node["tensors"]["weight"]], node["tensors"]["weight"]
        if w.dtype == torch.int8:
            plain_tensors[name] = dequantize_int8(w, tensors[node["tensors"]["weight_scale"]])
        else:
            assert w.dtype == torch.float16
            plain_tensors[name] = w.float()
    assert set(tensors) - set(plain_tensors) == {n["tensors"]["weight_scale"] for n in real_nodes(graph)
                                                 if "weight_scale" in n["tensors"]}
    for k, t in plain_tensors.items():  # binary weights, epilogues, BatchNorm: unchanged
        if not any(k == n["tensors"]["weight"] for n in real_nodes(graph)):
            assert torch.equal(t, tensors[k]), k
    write(tmp_path / "dequantized.bnn", plain_graph, plain_tensors)
    x = torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    assert torch.equal(deploy.load(trained_compact)(x), deploy.load(tmp_path / "dequantized.bnn")(x))


# ---- what it costs ----------------------------------------------------------------------------
def test_trained_model_keeps_its_top1(trained_compact, cifar_1000):  # noqa: F811
    """On 1,000 CIFAR-10 test images: top-1 within 2 points, 85 % of the predictions unchanged.
    (The 3-epoch model flips predictions under any change of its stem: float16 alone changes 9 %
    of them on the full test set, the int8 classifier 0.3 %; see docs/deploy.md, Compact files.)"""
    images, labels = cifar_1000
    ref, out = logits(deploy.load(TRAINED), images), logits(deploy.load(trained_compact), images)
    top1 = float((ref.argmax(1) == labels).float().mean())
    assert top1 > 0.45  # trained: the agreement means something
    assert abs(float((out.argmax(1) == labels).float().mean()) - top1) <= 0.02
    assert float((out.argmax(1) == ref.argmax(1)).float().mean()) >= 0.85
    assert float((out - ref).norm() / ref.norm()) < 0.2


@pytest.mark.parametrize("name, method", [("resnet18_1w1a", m) for m in ("siman", "biper", "recu", "irnet", "rbnn")]
                         + [("birealnet18", "reactnet"), ("reactnet", "reactnet")])
def test_imagenet_compact_is_a_twentieth(name, method, tmp_path):
    torch.manual_seed(0)
    net = bnnkit.create_model(name, method=method, dataset="imagenet", **get_method(method).export_settings)
    info = deploy.export(net, tmp_path / "c.bnn", example_input_shape=(1, 3, 224, 224), compact=True)
    assert info["float32_params_bytes"] == 4 * sum(t.numel() for t in net.state_dict().values() if t.is_floating_point())
    assert info["bytes"] * 20 <= info["float32_params_bytes"], (info["bytes"], info["float32_params_bytes"])
    assert info["float16_tensors"] == 1  # the stem; the downsample convs (if real) and the classifier int8
    graph, tensors = read(tmp_path / "c.bnn")
    assert graph["compact"] is True
    fc = next(n for n in real_nodes(graph) if n["op"] == "linear")
    assert tensors[fc["tensors"]["weight"]].dtype == torch.int8


# ---- corrupt compact files: both readers refuse them with one line -----------------------------
def _classifier(graph):
    return next(n for n in real_nodes(graph) if "weight_scale" in n["tensors"])


def _stem(graph):
    return next(n for n in real_nodes(graph) if n["op"] == "conv")


def _shorter_scale(graph, tensors):
    name = _classifier(graph)["tensors"]["weight_scale"]
    tensors[name] = tensors[name][:-1].clone()


def _no_scale(graph, tensors):
    del tensors[_classifier(graph)["tensors"].pop("weight_scale")]


def _nan_scale(graph, tensors):
    tensors[_classifier(graph)["tensors"]["weight_scale"]][3] = float("nan")


def _zero_scale(graph, tensors):
    tensors[_classifier(graph)["tensors"]["weight_scale"]][0] = 0.0


def _float16_scale(graph, tensors):
    name = _classifier(graph)["tensors"]["weight_scale"]
    tensors[name] = tensors[name].half()


def _scale_on_float16(graph, tensors):
    stem = _stem(graph)
    stem["tensors"]["weight_scale"] = f"{stem['name']}.weight_scale"
    tensors[stem["tensors"]["weight_scale"]] = torch.ones(tensors[stem["tensors"]["weight"]].shape[0])


def _int16_weight(graph, tensors):  # with its scale still there
    name = _classifier(graph)["tensors"]["weight"]
    tensors[name] = tensors[name].to(torch.int16)


CORRUPT = [(_shorter_scale, r"weight_scale' has shape \(9,?\), expected \(10,?\)"),
           (_no_scale, r"lacks tensor 'weight_scale'"),
           (_nan_scale, r"weight_scale' of int8 weight '.*' must be finite and > 0"),
           (_zero_scale, r"weight_scale' of int8 weight '.*' must be finite and > 0"),
           (_float16_scale, r"weight_scale' has dtype torch.float16, expected torch.float32"),
           (_scale_on_float16, r"has a weight_scale but its weight is not int8"),
           (_int16_weight, r"has a weight_scale but its weight is not int8")]


@pytest.fixture(scope="module")
def libbnn():
    from bnnkit.deploy import _libbnn
    if not _libbnn.library_path().is_file():
        pytest.fail(f"{_libbnn.library_path()} is missing: build libbnn with `make runtime` (or set BNNKIT_LIBBNN)")
    return _libbnn.LibbnnRuntime


@pytest.mark.parametrize("edit, match", CORRUPT, ids=[e.__name__.lstrip("_") for e, _ in CORRUPT])
def test_corrupt_compact_file_is_refused(trained_compact, tmp_path, libbnn, edit, match):
    graph, tensors = read(trained_compact)
    edit(graph, tensors)
    path = tmp_path / "bad.bnn"
    write(path, graph, tensors)  # valid checksums: the compact checks themselves are reached
    for load in (deploy.load, libbnn):
        with pytest.raises(DeployFormatError, match=match) as info:
            load(path)
        msg = str(info.value)
        assert "\n" not in msg and msg.startswith(f"{path}: ") and "; re-export" in msg, (load, msg)


def test_libbnn_dequantizes_as_the_python_runtime(trained_compact, libbnn, cifar_1000, tmp_path):  # noqa: F811
    """libbnn on the compact file gives, to the bit, its logits on a float32 file holding
    float32(q) * scale (and the float16 stem widened): its dequantization is the format's; and
    it stays within 1e-5 relative of the Python runtime on the same compact file, image by image."""
    graph, tensors = read(trained_compact)
    for node in real_nodes(graph):
        name = node["tensors"]["weight"]
        if "weight_scale" in node["tensors"]:
            tensors[name] = dequantize_int8(tensors[name], tensors.pop(node["tensors"].pop("weight_scale")))
        else:
            tensors[name] = tensors[name].float()
    write(tmp_path / "dequantized.bnn", graph, tensors)
    images = cifar_1000[0][::10].contiguous()  # NCHW, the order libbnn takes
    out = libbnn(trained_compact)(images)
    assert torch.equal(out, libbnn(tmp_path / "dequantized.bnn")(images))
    ref = deploy.load(trained_compact)(images)
    rel = (out - ref).abs().amax(1) / ref.abs().amax(1)
    assert bool((rel <= 1e-5).all()), rel.sort().values[-5:]


# ---- the command line ---------------------------------------------------------------------------
def test_cli_export_compact(tmp_path, capsys):
    torch.manual_seed(0)
    model = bnnkit.create_model("resnet20_1w1a", method="siman").eval()
    torch.save({"format": "bnnkit-checkpoint", "version": 1, "spec": model.bnnkit_spec, "epoch": 0, "config": {},
                "state_dict": model.state_dict()}, tmp_path / "r20.pt")
    assert deploy.cli_export([str(tmp_path / "r20.pt"), "-o", str(tmp_path / "plain.bnn")]) == 0
    capsys.readouterr()
    assert deploy.cli_export([str(tmp_path / "r20.pt"), "-o", str(tmp_path / "small.bnn"), "--compact"]) == 0
    assert "compact: 1 real weights int8, 1 float16" in capsys.readouterr().out
    assert (tmp_path / "small.bnn").stat().st_size < (tmp_path / "plain.bnn").stat().st_size
    graph, tensors = read(tmp_path / "small.bnn")
    assert graph["compact"] is True
    fc = next(n for n in real_nodes(graph) if n["op"] == "linear")
    q, scale = int8_per_channel(model.linear.weight.detach())
    assert torch.equal(tensors[fc["tensors"]["weight"]], q) and torch.equal(tensors[fc["tensors"]["weight_scale"]], scale)
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    out = deploy.load(tmp_path / "small.bnn")(x)
    assert out.shape == (4, 10) and bool(torch.isfinite(out).all())
    assert "compact" not in read(tmp_path / "plain.bnn")[0]


@pytest.mark.parametrize("argv, match", [(["{missing}", "-o", "{out}"], "no-such.pt"),
                                         (["{ckpt}", "-o", "{nodir}"], "does not exist")])
def test_cli_export_compact_bad_input(tmp_path, capsys, argv, match):
    torch.manual_seed(0)
    model = bnnkit.create_model("resnet20_1w1a", method="siman")
    torch.save({"format": "bnnkit-checkpoint", "version": 1, "spec": model.bnnkit_spec, "epoch": 0, "config": {},
                "state_dict": model.state_dict()}, tmp_path / "r20.pt")
    names = {"missing": tmp_path / "no-such.pt", "out": tmp_path / "m.bnn", "ckpt": tmp_path / "r20.pt",
             "nodir": tmp_path / "nodir" / "m.bnn"}
    assert deploy.cli_export([a.format(**names) for a in argv] + ["--compact"]) in (1, 2)  # as the flag walk allows
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and match in lines[0] and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r20.pt"]
