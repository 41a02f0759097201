"""`bnnkit inspect` on a SiMaN and a BiPer stage-2 checkpoint of tiny real runs: the undecided fraction and
the bit balance against values computed here from the checkpoints' tensors, the tables and figures; and
every registered method's decision points against the bits its quantizer gives."""
from __future__ import annotations

import csv
import math

import pytest
import torch

import bnnkit
from bnnkit.methods import list_methods, method_of
from bnnkit.models import model_entry
from bnnkit.nn.layers import binary_convs
from bnnkit.train import read_checkpoint
from tests._train_fixtures import CIFAR, TINY, cli
from tests.test_run_figures import assert_real_picture

DELTA = 0.05


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("inspect")
    code, _, err = cli("train", "recipes/cifar10/siman_resnet20.yaml", *TINY, "--epochs", "1",
                       "--results_dir", root, "--save", "siman")
    assert code == 0, err
    code, _, err = cli("train", "recipes/cifar10/biper_resnet20.yaml", *TINY, "--results_dir", root, "--save", "biper",
                       "--set", "stage1.epochs=1", "--set", "stage2.epochs=2")
    assert code == 0, err
    return {"siman": root / "siman" / "last.pt", "biper": root / "biper" / "stage2" / "last.pt"}


def table(path):
    with open(path) as fh:
        return {r["layer"]: r for r in csv.DictReader(fh)}


def expected_siman(state, layer):
    """SiMaN: +1 where |W - mean_r| / std_r is above its row's median m_r, so the decision points of a
    row are mean_r -+ m_r std_r; its bits are the stored code."""
    w = state[f"{layer}.weight"].double().reshape(state[f"{layer}.weight"].shape[0], -1)
    u = w - w.mean(1, keepdim=True)
    s = torch.sqrt(w.var(1, keepdim=True) + 1e-5)
    m = (u / s).abs().median(1, keepdim=True).values
    undecided = float(((u.abs() - m * s).abs() < DELTA * w.std()).double().mean())
    return undecided, state[f"{layer}.weight_quantizer.code"].double().mean(1)


def expected_biper(state, layer, freq):
    """BiPer: sign(sin(f W)) changes at every multiple of pi/f."""
    w = state[f"{layer}.weight"].double().reshape(state[f"{layer}.weight"].shape[0], -1)
    step = math.pi / freq
    undecided = float(((w - torch.round(w / step) * step).abs() < DELTA * w.std()).double().mean())
    return undecided, (torch.sin(freq * w) > 0).double().mean(1)


@pytest.mark.parametrize("which", ["siman", "biper"])
def test_inspect_against_the_checkpoints_own_tensors(checkpoints, which, tmp_path):
    out = tmp_path / "out"
    code, stdout, err = cli("inspect", checkpoints[which], "--data_path", CIFAR, "-b", "64", "-o", out)
    assert code == 0, err
    ckpt = read_checkpoint(str(checkpoints[which]))
    if which == "biper":
        assert ckpt["spec"]["settings"]["stage"] == 2
    state = ckpt["state_dict"]
    rows = table(out / "inspect.csv")
    layers = [n for n, _ in binary_convs(bnnkit.create_model("resnet20_1w1a", which))]
    assert list(rows) == layers
    for layer, r in rows.items():
        if which == "siman":
            undecided, channels = expected_siman(state, layer)
        else:
            undecided, channels = expected_biper(state, layer, ckpt["spec"]["settings"]["freq"])
        assert float(r["undecided"]) == pytest.approx(undecided, abs=2e-3), layer
        assert float(r["plus_one"]) == pytest.approx(float(channels.mean()), abs=1e-5), layer
        assert float(r["plus_one_min"]) == pytest.approx(float(channels.min()), abs=1e-5), layer
        assert float(r["plus_one_max"]) == pytest.approx(float(channels.max()), abs=1e-5), layer
        assert 0 < float(r["act_plus_one"]) < 1 and float(r["act_mean_abs"]) > 0, layer
        assert (r["qe"] != "") == (which == "biper"), layer  # the method's own QE: BiPer defines one
    if which == "siman":  # SiMaN's median split keeps each channel's bits balanced
        assert all(abs(float(r["plus_one"]) - 0.5) < 0.01 for r in rows.values())
    md = (out / "inspect.md").read_text()
    assert md.count("| layer | out_channels |") == 1 and all(f"| {layer} |" in md for layer in layers)
    for name in ("undecided.png", "bit_balance.png", "act_plus_one.png", "act_mean_abs.png"):
        assert_real_picture(out / name)
    assert len(list((out / "weights").glob("*.png"))) == len(layers)
    assert_real_picture(out / "weights" / "layer1_0_conv1.png")
    assert ((out / "qe.png").exists()) == (which == "biper")


@pytest.mark.parametrize("method", list_methods())
def test_every_methods_decision_points_separate_its_bits(method):
    """Within a layer, weights with the same number of decision points below their v have the same bit."""
    torch.manual_seed(0)
    arch = bnnkit.methods.get_method(method).architecture  # ReActNet builds its own models
    name = next(n for n in ("resnet20_1w1a", *bnnkit.list_models("cifar")) if arch in model_entry(n).architectures)
    model = bnnkit.create_model(name, method).train()
    model(torch.randn(2, 3, 32, 32))  # one training forward: SiMaN's code then follows the weights
    m = method_of(model)
    for name, conv in binary_convs(model):
        v, points = m.decision_points(conv)
        assert v.shape == (conv.weight.shape[0], conv.weight[0].numel()), name
        assert points.dim() == 1 or (points.dim() == 2 and points.shape[0] == v.shape[0]), name
        p = points.reshape(1, 1, -1) if points.dim() == 1 else points.unsqueeze(1)
        odd = (v.unsqueeze(-1) > p).sum(-1) % 2 == 1
        bits = conv.weight_quantizer.sign_bits(conv.weight).reshape(v.shape)
        agree = float((bits == odd).float().mean())
        assert agree > 0.99 or agree < 0.01, (name, agree)


def test_bad_input_is_one_error_line(tmp_path):
    code, _, err = cli("inspect", tmp_path / "missing.pt", "-o", tmp_path / "out")
    assert code != 0 and err.startswith("error: ") and len(err.strip().splitlines()) == 1
