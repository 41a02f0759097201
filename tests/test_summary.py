"""The model summary, checked against figures worked out by hand from the architecture."""
import subprocess
import sys

import pytest

import bnnkit
from bnnkit.analysis.summary import summarize


def test_imagenet_resnet18_figures_by_hand():
    s = summarize(bnnkit.create_model("resnet18_1w1a", "biper", dataset="imagenet"))
    # Binary 3x3 convs, (in, out, output side): layer1 4x(64,64,56); layer2 (64,128,28) + 3x(128,128,28); ...
    convs = [(64, 64, 56)] * 4 + [(64, 128, 28)] + [(128, 128, 28)] * 3 + \
            [(128, 256, 14)] + [(256, 256, 14)] * 3 + [(256, 512, 7)] + [(512, 512, 7)] * 3
    binary_params = sum(i * o * 9 for i, o, _ in convs)
    binary_macs = sum(i * o * 9 * side * side for i, o, side in convs)
    assert s.binary_params == binary_params == 10_985_472
    assert s.binary_macs == binary_macs
    # real: 7x7 stem on 112x112, three 1x1 downsamples, fc 512->1000
    real_macs = 3 * 64 * 49 * 112 * 112 + 64 * 128 * 28 * 28 + 128 * 256 * 14 * 14 + 256 * 512 * 7 * 7 + 512 * 1000
    assert s.real_macs == real_macs
    bn_channels = 64 + 4 * (64 + 128 + 256 + 512) + (128 + 256 + 512)  # stem, 4 BNs a layer, downsamples
    real_params = (3 * 64 * 49 + 64 * 128 + 128 * 256 + 256 * 512  # real convs
                   + 4 * bn_channels + 4 * 512  # BatchNorm2d and BN1d: 4 values a channel
                   + sum(o for _, o, _ in convs)  # alpha
                   + 512 * 1000 + 1000)  # fc
    assert s.real_params == real_params
    assert s.deployed_bytes == binary_params / 8 + 4 * real_params
    assert s.ops == pytest.approx(binary_macs / 64 + real_macs)


def test_summary_leaves_the_model_untouched():
    model = bnnkit.create_model("resnet20_1w1a", "siman", percent=10.0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    summarize(model)
    assert all((before[k] == v).all() for k, v in model.state_dict().items())


@pytest.mark.parametrize("model,method,dataset", [
    ("resnet20_1w1a", "siman", "cifar10"), ("resnet18_1w1a", "siman", "cifar10"),
    ("vgg_small_1w1a", "biper", "cifar10"), ("resnet34_1w1a", "siman", "imagenet"),
    ("mobilenet_1w1a", "biper", "imagenet")])
def test_summary_command_prints_every_published_family(model, method, dataset):
    out = subprocess.run([sys.executable, "-c", "import sys; from bnnkit.analysis.summary import main; sys.exit(main(sys.argv[1:]))",
                          model, "--method", method, "--dataset", dataset], capture_output=True, text=True, check=True).stdout
    assert "deployed size" in out and "binary MACs (BOPs)" in out and model in out


def test_reactnet_a_operations_equal_the_papers_table():
    # ReActNet (ECCV 2020) Table: ReActNet-A has 4.82e9 BOPs, 0.12e8 FLOPs, 0.87e8 OPs (BOPs/64 + FLOPs),
    # counted from the same 224x224 input; a wrong block width or a missed duplicated concat moves them.
    s = summarize(bnnkit.create_model("reactnet", "reactnet", dataset="imagenet"))
    assert round(s.binary_macs / 1e9, 2) == 4.82
    assert round(s.real_macs / 1e8, 2) == 0.12
    assert round(s.ops / 1e8, 2) == 0.87
