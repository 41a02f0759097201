"""ReActNet beyond its golden cases (METHODS.md §4): the authors' checkpoints of both steps, the
architecture's doubling blocks and shortcuts, the weight-decay groups and learning rates of
train.py, and how step 2 starts from step 1."""
import pytest
import torch

import bnnkit
from bnnkit.compat import CheckpointError, load_reference, reference_names
from bnnkit.nn.layers import binary_convs


def _authors_state(model):
    names = reference_names(model)
    return {"module." + names[k]: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("model_name,flat", [("reactnet", True), ("birealnet18", False)])
def test_step2_checkpoints_load_with_the_authors_layout_and_prefix(model_name, flat, tmp_path):
    """ReActNet-A's step-2 binary convs are `weights` [O*C*K*K, 1]; Bi-Real's stay `weight`
    [O, C, K, K]; DataParallel's `module.` prefix is dropped; everything loads strictly."""
    torch.manual_seed(0)
    source = bnnkit.create_model(model_name, "reactnet", dataset="imagenet", num_classes=10, step=2)
    with torch.no_grad():
        for _, conv in binary_convs(source):
            conv.weight.normal_()
    state = _authors_state(source)
    conv_name, conv = binary_convs(source)[0]
    if flat:
        assert f"module.{conv_name}.weight" not in state
        for name, c in binary_convs(source):  # the authors' flat parameter, a row-major view of [O, C, K, K]
            state[f"module.{name}.weights"] = c.weight.detach().reshape(-1, 1).clone()
        assert state[f"module.{conv_name}.weights"].shape == (conv.weight.numel(), 1)
    else:
        assert state[f"module.{conv_name}.weight"].shape == conv.weight.shape
    torch.save({"epoch": 3, "state_dict": state}, tmp_path / "checkpoint.pth.tar")
    loaded = load_reference(tmp_path / "checkpoint.pth.tar", "reactnet", model_name, 10, "imagenet", step=2)
    for (k, a), b in zip(source.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), k


def test_a_step1_checkpoint_is_not_a_step2_reactnet_a():
    """The keys differ between the steps (`weight` vs `weights`): loading says so instead of
    silently leaving weights out, as the authors' strict=False does."""
    step1 = bnnkit.create_model("reactnet", "reactnet", dataset="imagenet", num_classes=10, step=1)
    with pytest.raises(CheckpointError, match="missing 31 key"):
        load_reference(_authors_state(step1), "reactnet", "reactnet", 10, "imagenet", step=2)
    assert load_reference(_authors_state(step1), "reactnet", "reactnet", 10, "imagenet", step=1) is not None


def test_reactnet_a_blocks_double_by_concatenation_and_pool_their_shortcuts():
    """Blocks 1, 2, 4, 6, 12 double their channels with two 1x1 convs whose halves both add the same
    h; the stride-2 blocks (2, 4, 6, 12) average-pool the shortcut; the head pools globally."""
    torch.manual_seed(0)
    model = bnnkit.create_model("reactnet", "reactnet", dataset="imagenet", num_classes=10)
    doubling = [i for i, b in enumerate(model.feature) if getattr(b, "doubles", False)]
    pooled = [i for i, b in enumerate(model.feature) if getattr(b, "pooling", None) is not None]
    assert doubling == [1, 2, 4, 6, 12] and pooled == [2, 4, 6, 12]
    block = model.feature[2].eval()
    x = torch.randn(1, 64, 8, 8)
    with torch.no_grad():
        for m in block.modules():
            if isinstance(m, bnnkit.methods.reactnet.LearnableBias):
                m.bias.normal_(0, 0.1)
        out = block(x)
        # an independent reading of METHODS.md §4.3
        r = torch.nn.functional.avg_pool2d(x, 2, 2)
        h1 = block.bn1(torch.nn.functional.conv2d(torch.sign(x + block.move11.bias), block.binary_3x3.weight, stride=2, padding=1))
        h = block.prelu1(h1 + r + block.move12.bias) + block.move13.bias
        b = torch.sign(h + block.move21.bias)
        o = torch.cat([block.bn2_1(torch.nn.functional.conv2d(b, block.binary_pw_down1.weight)) + h,
                       block.bn2_2(torch.nn.functional.conv2d(b, block.binary_pw_down2.weight)) + h], 1)
        want = block.prelu2(o + block.move22.bias) + block.move23.bias
    assert out.shape == (1, 128, 4, 4)
    assert torch.allclose(out, want, atol=1e-5)
