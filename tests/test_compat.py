"""Loading the authors' checkpoints, and naming bnnkit's state as they do."""
import os

import pytest
import torch

import bnnkit
from bnnkit.compat import CheckpointError, load_reference, reference_names
from bnnkit.nn.layers import binary_convs


def _as_reference(model, **overrides):
    names = reference_names(model)
    state = {names[k]: v.clone() for k, v in model.state_dict().items()}
    state.update(overrides)
    return state


def _randomize(model):
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) if p.dtype.is_floating_point else p)
    return model


def test_reference_names_rename_quantizer_state_only():
    siman = bnnkit.create_model("resnet20_1w1a", "siman")
    names = reference_names(siman)
    assert names["layer1.0.conv1.weight_quantizer.code"] == "layer1.0.conv1.B"
    assert names["layer1.0.conv1.alpha"] == "layer1.0.conv1.alpha"
    assert sum(k != v for k, v in names.items()) == 18  # one B per binary conv
    biper = bnnkit.create_model("resnet20_1w1a", "biper")
    assert reference_names(biper)["layer3.2.conv2.weight_quantizer.beta"] == "layer3.2.conv2.beta"


@pytest.mark.parametrize("b_shape", ["cifar", "imagenet"])
def test_siman_code_loads_in_either_published_shape(b_shape):
    source = _randomize(bnnkit.create_model("resnet20_1w1a", "siman"))
    state = _as_reference(source)
    percents = {}
    for name, conv in binary_convs(source):
        code = state[f"{name}.B"]
        state[f"{name}.B"] = code.reshape(code.shape[0], 1, -1) if b_shape == "cifar" else code
        percents[name] = float(len(percents))
        state[f"{name}.percent"] = torch.tensor(percents[name])
    loaded = load_reference(state, "siman", "resnet20_1w1a", 10)
    for (k, a), b in zip(source.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), k
    # percent is applied layer by layer, as the checkpoint stores it
    assert {n: c.weight_quantizer.percent for n, c in binary_convs(loaded)} == percents


@pytest.mark.parametrize("tau_shape", [(), (1,)])
def test_biper_tau_and_dataparallel_prefix(tau_shape, tmp_path):
    source = _randomize(bnnkit.create_model("resnet20_1w1a", "biper"))
    state = _as_reference(source)
    for name, _ in binary_convs(source):
        state[f"{name}.tau"] = torch.full(tau_shape, 0.037)
    path = tmp_path / "model_best.pth.tar"
    torch.save({"epoch": 3, "state_dict": {"module." + k: v for k, v in state.items()}}, path)
    loaded = load_reference(path, "biper", "resnet20_1w1a", 10, freq=20.0, stage2=True)
    assert all(c.weight_quantizer.tau == pytest.approx(0.037) for _, c in binary_convs(loaded))
    assert {c.weight_quantizer.stage for _, c in binary_convs(loaded)} == {2}
    assert torch.equal(loaded.layer2[0].conv1.weight, source.layer2[0].conv1.weight)


def test_checkpoint_of_another_model_or_method_is_refused():
    state = _as_reference(bnnkit.create_model("resnet20_1w1a", "siman"))
    with pytest.raises(CheckpointError, match="not a biper resnet20_1w1a .*unexpected .*B"):
        load_reference(state, "biper", "resnet20_1w1a", 10)
    with pytest.raises(CheckpointError, match="not a siman vgg_small_1w1a"):
        load_reference(state, "siman", "vgg_small_1w1a", 10)
    state["linear.weight"] = torch.zeros(100, 64)
    with pytest.raises(CheckpointError, match=r"linear.weight: shape \(100, 64\)"):
        load_reference(state, "siman", "resnet20_1w1a", 10)


class _Payload:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_files_with_code_truncated_or_missing_are_refused(tmp_path):
    evil = tmp_path / "evil.pth"
    torch.save({"state_dict": {}, "x": _Payload()}, evil)
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_reference(evil, "siman", "resnet20_1w1a", 10)
    good = tmp_path / "good.pth"
    torch.save(bnnkit.create_model("resnet20_1w1a", "siman").state_dict(), good)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="is the file complete"):
        load_reference(truncated, "siman", "resnet20_1w1a", 10)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_reference(tmp_path / "nope.pth", "siman", "resnet20_1w1a", 10)
