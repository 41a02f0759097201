"""Parameter groups and their weight decay equal REFERENCE.md §3.2 for each method and dataset."""
from __future__ import annotations

import pytest
import torch

import bnnkit
from bnnkit.train import build_optimizer, param_groups

WD = 1e-3


def groups(model: str, method: str, dataset: str) -> list[dict]:
    net = bnnkit.create_model(model, method, dataset)
    gs = param_groups(net, WD, 0.1)
    names = [n for g in gs for n in g["names"]]
    assert sorted(names) == sorted(n for n, _ in net.named_parameters())  # every parameter exactly once
    return gs


def test_siman_cifar_resnet():
    decayed, plain = groups("resnet20_1w1a", "siman", "cifar10")
    assert (decayed["weight_decay"], plain["weight_decay"]) == (WD, 0.0)
    assert set(plain["names"]) == {n for n in plain["names"] if "layer" in n and "conv" in n}
    for n in ("layer1.0.conv1.weight", "layer3.2.conv2.alpha", "layer1.0.conv1.weight_quantizer.code"):
        assert n in plain["names"]
    for n in ("conv1.weight", "bn1.weight", "layer1.0.bn1.bias", "bn2.weight", "linear.weight", "linear.bias"):
        assert n in decayed["names"]


def test_siman_cifar_resnet18_decays_its_binary_shortcuts():  # quirk Q7
    decayed, plain = groups("resnet18_1w1a", "siman", "cifar10")
    for n in ("layer2.0.shortcut.0.weight", "layer2.0.shortcut.0.alpha"):
        assert n in decayed["names"]
    assert "layer2.0.conv1.weight" in plain["names"]


def test_siman_vgg():
    decayed, plain = groups("vgg_small_1w1a", "siman", "cifar10")
    assert set(plain["names"]) == {f"conv{i}.{k}" for i in range(1, 6) for k in ("weight", "alpha", "weight_quantizer.code")}
    for n in ("conv0.weight", "bn0.weight", "nonlinear0.weight", "bn3.bias", "nonlinear5.weight", "fc.weight"):
        assert n in decayed["names"]


def test_siman_imagenet():
    decayed, plain = groups("resnet18_1w1a", "siman", "imagenet")
    assert "layer2.0.downsample.0.weight" in decayed["names"]
    assert {"layer1.0.conv1.weight", "layer1.0.conv1.alpha"} <= set(plain["names"])
    assert {"conv1.weight", "bn2.weight", "fc.weight", "layer4.1.bn2.bias"} <= set(decayed["names"])


@pytest.mark.parametrize("model", ["resnet18_1w1a", "resnet20_1w1a", "vgg_small_1w1a"])
def test_biper_cifar_one_group_all_decayed(model):
    (only,) = groups(model, "biper", "cifar10")
    assert only["weight_decay"] == WD


def test_biper_imagenet():
    decayed, plain = groups("resnet18_1w1a", "biper", "imagenet")
    assert (decayed["weight_decay"], plain["weight_decay"]) == (WD, 0.0)
    assert set(decayed["names"]) == {n for n in decayed["names"] if "fc" in n or "conv" in n}
    assert {"conv1.weight", "layer1.0.conv1.weight", "layer1.0.conv1.alpha", "fc.weight", "fc.bias"} <= set(decayed["names"])
    assert {"layer2.0.downsample.0.weight", "layer2.0.downsample.1.weight", "bn1.weight", "bn2.weight"} <= set(plain["names"])
    decayed, plain = groups("mobilenet_1w1a", "biper", "imagenet")
    assert "model.0.0.weight" in plain["names"] and "model.1.conv1.alpha" in decayed["names"]


def test_optimizer_is_the_authors_sgd():
    net = bnnkit.create_model("resnet20_1w1a", "siman", "cifar10")
    opt = build_optimizer(net, {"weight_decay": 5e-4, "lr": 0.1, "momentum": 0.9, "optimizer": "sgd"})
    assert isinstance(opt, torch.optim.SGD)
    assert [g["weight_decay"] for g in opt.param_groups] == [5e-4, 0.0]
    for g in opt.param_groups:
        assert (g["momentum"], g["dampening"], g["nesterov"], g["initial_lr"]) == (0.9, 0, False, 0.1)
