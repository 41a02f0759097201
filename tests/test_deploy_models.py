"""Every published model, exported and run by the packed runtime and by libbnn (the C++ library
of runtime/, through `deploy.load(engine="libbnn")`), against PyTorch's eval-mode logits: the
runtime's bits, libbnn within 1e-5 relative, the same top-1 (random inputs; 1,000 CIFAR-10 test
images for the CIFAR models); file size; the export command line."""
import tarfile
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import bnnkit
from bnnkit import deploy
from bnnkit.compat import reference_names
from bnnkit.deploy._bench import float_twin
from bnnkit.deploy._export import is_binary_conv

from ._shared import CIFAR10_TARBALL
from .test_deploy_format import randomize

CIFAR = ["resnet20_1w1a", "resnet18_1w1a", "resnet18A_1w1a", "resnet18B_1w1a", "resnet18C_1w1a", "vgg_small_1w1a"]
CASES = ([(m, meth, "cifar10") for m in CIFAR for meth in ("siman", "biper")]
         + [("resnet20_1w32a", "biper", "cifar10"), ("resnet20_1w1a", "xnor", "cifar10"), ("resnet20_1w1a", "ste", "cifar10")]
         + [(m, meth, "imagenet") for m in ("resnet18_1w1a", "resnet34_1w1a") for meth in ("siman", "biper")]
         + [("mobilenet_1w1a", "biper", "imagenet")]
         # ReCU's alpha, IR-Net's power-of-two scale and LogSoftmax heads, RBNN's rotated weights
         + [(m, meth, "cifar10") for m in ("resnet20_1w1a", "resnet18_1w1a", "vgg_small_1w1a") for meth in ("recu", "irnet", "rbnn")]
         + [("resnet20_bireal_1w1a", "rbnn", "cifar10"), ("resnet18A_1w1a", "rbnn", "cifar10"), ("resnet20_1w32a", "irnet", "cifar10")]
         + [("resnet18_1w1a", meth, "imagenet") for meth in ("recu", "irnet", "rbnn")] + [("resnet18_1w32a", "irnet", "imagenet")]
         # ReActNet-A (MobileNet blocks, learnable biases, RPReLU) and its Bi-Real ResNets, step 2 (binary weights)
         + [(m, "reactnet", "imagenet") for m in ("reactnet", "birealnet18", "birealnet34")] + [("birealnet20", "reactnet", "cifar10")])
# binary BiPer weights; a ReCU clamp that clips; ReActNet's second step (its first keeps real weights)
SETTINGS = {"biper": {"stage": 2}, "recu": {"tau": 0.9}, "reactnet": {"step": 2}}
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def build(name, method, dataset, seed=0):
    torch.manual_seed(seed)
    return randomize(bnnkit.create_model(name, method=method, dataset=dataset, **SETTINGS.get(method, {})), seed)


_EXPORTED = {}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(model, export summary, runtime); the ImageNet ResNet-18s, used twice, are kept."""
    def get(name, method, dataset):
        key = (name, method, dataset)
        if key in _EXPORTED:
            return _EXPORTED[key]
        model = build(name, method, dataset)
        shape = (4, 3, 32, 32) if dataset == "cifar10" else (1, 3, 224, 224)
        path = tmp_path_factory.mktemp("models") / f"{name}-{method}-{dataset}.bnn"
        result = (model, *export_load(model, path, shape))
        if (name, dataset) == ("resnet18_1w1a", "imagenet"):
            _EXPORTED[key] = result
        return result
    yield get
    _EXPORTED.clear()


def export_load(model, path, shape):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random init can hold weights exactly 0: handled, and tested below
        info = deploy.export(model, path, example_input_shape=shape)
    return info, deploy.load(path)


def compare(model, net, x):
    with torch.no_grad():
        ref = model(x)
    out = net(x)
    rel = ((out - ref).abs().max() / ref.abs().max()).item()
    return rel, out, ref


@pytest.mark.parametrize("name, method, dataset", CASES, ids=[f"{m}-{meth}-{d}" for m, meth, d in CASES])
def test_runtime_matches_eval_logits(exported, name, method, dataset):
    model, info, net = exported(name, method, dataset)
    shape = (4, 3, 32, 32) if dataset == "cifar10" else (1, 3, 224, 224)
    n_binary = sum(1 for m in model.modules() if is_binary_conv(m))
    assert info["binary_convs"] == n_binary > 0
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    for layout in (torch.contiguous_format, torch.channels_last):  # the model's memory order follows its input's
        rel, out, ref = compare(model, net, x.contiguous(memory_format=layout))
        if method == "xnor":  # weights ±mean|w|: the model's float conv sums non-integers in oneDNN's order
            assert rel < 1e-5 and torch.equal(out.argmax(1), ref.argmax(1))
        else:  # integer dot products, and the runtime rounds where the model rounds: the same bits
            assert torch.equal(out, ref), rel
    # libbnn computes the real layers (stem, 1x1 and classifier) with Eigen's GEMM, not oneDNN: the
    # same values to a few float32 ulps, so a binary activation can flip only where one lies that close
    # to its threshold (docs/deploy.md, "libbnn": PyTorch itself without oneDNN flips as often)
    lib = deploy.load(net.source, engine="libbnn", threads=1)
    rel, out, ref = compare(model, lib, x)  # NCHW, the one memory order libbnn takes
    assert rel <= 1e-5 and torch.equal(out.argmax(1), ref.argmax(1)), rel


def test_siman_runtime_on_one_thread_matches_eval_logits(exported):
    """On one thread PyTorch sums each SiMaN mean serially and the runtime computes it natively in
    PyTorch's order (on two, it asks PyTorch): the logits are still the model's bit for bit."""
    model, _, net = exported("resnet18_1w1a", "siman", "imagenet")
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(5))
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for layout in (torch.contiguous_format, torch.channels_last):
            rel, out, ref = compare(model, net, x.contiguous(memory_format=layout))
            assert torch.equal(out, ref), rel
    finally:
        torch.set_num_threads(old)


def test_blocks_end_in_the_binary_conv_epilogue(exported):
    """Each binary conv of a ResNet block computes its BatchNorm, residual add and activation in its
    epilogue: the graph's add and activation nodes take its value (test_runtime_matches_eval_logits
    shows the logits stay the model's bit for bit)."""
    for method, act_op in (("siman", "prelu"), ("biper", "call")):
        _, _, net = exported("resnet18_1w1a", method, "imagenet")
        layers = net.layers()
        ops = {name: op for name, op, _ in layers}
        fused = {name: info.get("fused") for name, op, info in layers if op == "bconv"}
        assert len(fused) == 16
        assert all(f is not None and [ops[n] for n in f] == ["alias", "call", act_op] for f in fused.values()), fused
        into = {name: info["fused_into"] for name, _, info in layers if "fused_into" in info}
        # and the stem's BatchNorm computes its activation and max pooling (test_stem_...)
        stem = {name: info.get("fused") for name, op, info in layers if op == "batchnorm" and info.get("fused")}
        assert stem == {"bn1": ["nonlinear", "maxpool"]}
        assert into == {n: conv for conv, f in fused.items() for n in f} | {"nonlinear": "bn1", "maxpool": "bn1"}


class _Tail(torch.nn.Module):
    """A BiPer binary conv followed by one of the patterns the runtime must fuse or leave alone."""
    def __init__(self, kind):
        super().__init__()
        self.conv, self.kind = bnnkit.create_model("resnet20_1w1a", method="biper", stage=2).layer1[0].conv1, kind
        self.slopes = torch.nn.PReLU(16)

    def forward(self, x):
        if self.kind == "broadcast":      # a residual of another shape: fused at load, PyTorch's add at run time
            r = x.mean((2, 3), keepdim=True)
            return torch.nn.functional.hardtanh(self.conv(x) + r)
        if self.kind == "late":           # the residual is computed after the conv: left to PyTorch
            y = self.conv(x)
            return torch.nn.functional.hardtanh(y + x * 0.5)
        if self.kind == "shared":         # the sum is read twice: only the add is fused
            z = x + self.conv(x)
            return torch.nn.functional.hardtanh(z, min_val=-0.5, max_val=0.25) + z
        if self.kind == "bounds":         # an activation alone, its bounds by keyword
            return torch.nn.functional.hardtanh(self.conv(x), min_val=-0.5, max_val=0.25)
        return self.slopes(self.conv(x))  # an activation alone


@pytest.mark.parametrize("kind, fused", [("broadcast", ["add", "hardtanh"]), ("late", None),
                                         ("shared", ["add"]), ("bounds", ["hardtanh"]), ("activation", ["slopes"])])
def test_fusion_keeps_the_model_bits_or_steps_aside(tmp_path, kind, fused):
    model = randomize(_Tail(kind))
    with torch.no_grad():
        model.slopes.weight.copy_(torch.randn(16))
    _, net = export_load(model, tmp_path / "t.bnn", (1, 16, 8, 8))
    assert {name: info.get("fused") for name, op, info in net.layers() if op == "bconv"} == {"conv": fused}
    x = torch.randn(3, 16, 8, 8, generator=torch.Generator().manual_seed(4))
    _, out, ref = compare(model, net, x)
    assert torch.equal(out, ref)
    unfused = deploy.load(tmp_path / "t.bnn", fuse=False)
    assert not any("fused" in info for _, _, info in unfused.layers()) and torch.equal(unfused(x), ref)


class _Stem(torch.nn.Module):
    """A real conv, BatchNorm, an activation and max pooling before a BiPer binary conv: the stems
    the runtime computes in one pass, and ones it must leave to PyTorch."""
    def __init__(self, kind):
        super().__init__()
        self.stem, self.bn, self.kind = torch.nn.Conv2d(3, 16, 3, 2, 1, bias=False), torch.nn.BatchNorm2d(16), kind
        self.act = {"relu": torch.nn.ReLU(), "prelu": torch.nn.PReLU(16), "none": torch.nn.Identity()}.get(kind, torch.nn.Hardtanh())
        self.pool = torch.nn.MaxPool2d(3, 2, 1, ceil_mode=kind == "ceil")
        self.conv = bnnkit.create_model("resnet20_1w1a", method="biper", stage=2).layer1[0].conv1

    def forward(self, x):
        y = self.bn(self.stem(x))
        z = self.pool(self.act(y))
        if self.kind == "shared":  # the BatchNorm's value is read again: left to PyTorch
            z = z + y[:, :, ::2, ::2]
        return self.conv(z)


@pytest.mark.parametrize("kind, fused", [("hardtanh", ["act", "pool"]), ("relu", ["act", "pool"]),
                                         ("prelu", ["act", "pool"]), ("none", ["act", "pool"]),
                                         ("ceil", None), ("shared", None)])
def test_stem_batchnorm_activation_and_pooling_fuse_with_the_model_bits(tmp_path, kind, fused):
    model = randomize(_Stem(kind))
    with torch.no_grad():
        model.bn.weight.normal_()  # negative scales too: the BatchNorm cannot move after the max
        if kind == "prelu":
            model.act.weight.copy_(torch.randn(16))
    _, net = export_load(model, tmp_path / "s.bnn", (1, 3, 30, 30))
    assert {name: info.get("fused") for name, op, info in net.layers() if op == "batchnorm"} == {"bn": fused}
    x = torch.randn(3, 3, 30, 30, generator=torch.Generator().manual_seed(6))
    for layout in (torch.contiguous_format, torch.channels_last):
        _, out, ref = compare(model, net, x.contiguous(memory_format=layout))
        assert torch.equal(out, ref)


def test_all_isas_give_the_same_logits(tmp_path):
    model = build("resnet18A_1w1a", "siman", "cifar10")
    deploy.export(model, tmp_path / "m.bnn", example_input_shape=(1, 3, 32, 32))
    x = torch.randn(2, 3, 32, 32)
    outs = [deploy.load(tmp_path / "m.bnn", isa=isa, threads=t)(x) for isa in deploy.available_isas() for t in (1, 2)]
    assert all(torch.equal(o, outs[0]) for o in outs)


def test_weights_exactly_zero_are_exact(tmp_path):
    """sign(0) = 0 cannot be packed in 1 bit: such weights are listed and corrected for."""
    model = build("resnet20_1w1a", "biper", "cifar10")
    mods = dict(model.named_modules())
    convs = [mods["layer1.0.conv1"], mods["layer2.0.conv1"]]
    with torch.no_grad():
        convs[0].weight[3, 5, 1, 1] = 0.0   # an interior tap
        convs[1].weight[7, 0, 0, 2] = 0.0   # a corner tap: also meets the zero padding (stride 2)
        convs[1].weight[7, 9, 2, 0] = 0.0
    with pytest.warns(UserWarning, match="3 binary weight"):
        deploy.export(model, tmp_path / "z.bnn", example_input_shape=(1, 3, 32, 32))
    net = deploy.load(tmp_path / "z.bnn")
    assert [n for n, _, i in net.layers() if i.get("zero_weights")] == ["layer1_0_conv1", "layer2_0_conv1"]
    x = torch.randn(4, 3, 32, 32)
    rel, out, ref = compare(model, net, x)
    assert rel < 1e-6
    # without the correction the packed +1 would differ: make sure the test can fail
    with torch.no_grad():
        for c in convs:
            c.weight[c.weight == 0] = 1e-3
        ref_plus = model(x)
    assert (ref_plus - ref).abs().max() > 1e3 * (out - ref).abs().max()


def test_irnet_power_of_two_scales_fold_exactly(tmp_path):
    """IR-Net's weights are sign(W_s) * 2^round(log2 mean|W_s|): 1 for ordinary filters, but a
    filter with one dominant tap has mean|W_s| ~ 2/sqrt(k) and scale 1/8. The scale folds into the
    conv's prescale, and a power of two times an integer is exact: the runtime gives the model's bits."""
    model = build("resnet20_1w1a", "irnet", "cifar10")
    conv = model.layer2[1].conv1
    with torch.no_grad():
        conv.weight[3].mul_(1e-4)
        conv.weight[3, 0, 1, 1] = 1.0
        conv.weight[5].mul_(1e-4)
        conv.weight[5, 7, 0, 2] = -2.0
    scales = conv.binary_weight().abs().amax(dim=(1, 2, 3))
    assert scales[3] == scales[5] == 0.125 and int((scales == 1).sum()) == scales.numel() - 2
    _, net = export_load(model, tmp_path / "ir.bnn", (1, 3, 32, 32))
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    for layout in (torch.contiguous_format, torch.channels_last):
        rel, out, ref = compare(model, net, x.contiguous(memory_format=layout))
        assert torch.equal(out, ref), rel


def test_real_inputs_that_are_not_signs_are_refused(tmp_path):
    """RBNN's --a32 convs take standardised real inputs: the runtime's 1-bit inputs would not be them."""
    model = randomize(bnnkit.create_model("resnet20_1w1a", method="rbnn", a32=True))
    with pytest.raises(deploy.DeployExportError, match="does not give sign"):
        deploy.export(model, tmp_path / "a32.bnn", example_input_shape=(1, 3, 32, 32))


def test_imagenet_resnet18_file_size(exported):
    sizes = {}
    for method in ("siman", "biper"):
        model, info, _ = exported("resnet18_1w1a", method, "imagenet")
        state = sum(t.numel() * 4 for t in model.state_dict().values() if t.is_floating_point())
        bconvs = [m for m in model.modules() if is_binary_conv(m)]
        binary = sum(m.weight.numel() for m in bconvs)
        real = sum(4 * t.numel() for m in model.modules() if not is_binary_conv(m)
                   for t in [*m.parameters(recurse=False), *m.buffers(recurse=False)] if t.is_floating_point())
        sizes[method] = (info["bytes"], state, binary, real)
        # 1 bit per binary weight; real layers and 3 epilogue constants per binary output channel in float32;
        # the JSON graph and safetensors header
        assert info["bytes"] <= binary / 8 + real + sum(12 * m.out_channels for m in bconvs) + 100_000
    siman_bytes, siman_state, _, _ = sizes["siman"]
    assert siman_bytes * 20 <= siman_state          # SiMaN's state_dict also holds its float32 codes B
    biper_bytes, biper_state, binary, real = sizes["biper"]
    assert biper_bytes * 10 <= biper_state          # BiPer: bounded by the float32 fc/downsample (see docs)


# ---- 1,000 CIFAR-10 test images ---------------------------------------------------------------
@pytest.fixture(scope="module")
def cifar_1000():
    """The first 100 test images of each class, normalised as the published CIFAR-10 recipes do."""
    from PIL import Image
    if not CIFAR10_TARBALL.exists():
        pytest.fail(f"{CIFAR10_TARBALL} is missing (the shared data set the tests use)")
    want = {(c, f"{i:04d}.jpg") for c in CLASSES for i in range(100)}
    images = {}
    with tarfile.open(CIFAR10_TARBALL) as tf:
        for member in tf:
            parts = member.name.split("/")
            if len(parts) == 4 and parts[1] == "test" and (parts[2], parts[3]) in want:
                images[(parts[2], parts[3])] = np.asarray(Image.open(tf.extractfile(member)).convert("RGB"))
                if len(images) == len(want):
                    break
    assert len(images) == 1000
    keys = sorted(images)
    # NCHW in memory, as libbnn takes it (a permuted NHWC array is channels-last to PyTorch, whose
    # SiMaN means then sum in that order: both orders are tested in test_runtime_matches_eval_logits)
    x = torch.from_numpy(np.stack([images[k] for k in keys])).permute(0, 3, 1, 2).contiguous().float() / 255
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    labels = torch.tensor([CLASSES.index(k[0]) for k in keys])
    return (x - mean) / std, labels


def calibrate(model, images, seed=0):
    """A realistic untrained network: BN statistics measured on the images, random BN affine
    parameters around (1, 0) and random alphas. (Random statistics make ReLU networks explode on
    real images, and then every image gets the same class.)"""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                m.reset_running_stats()
                m.momentum = None  # cumulative average over the calibration batch
                m.weight.copy_(1 + 0.3 * torch.randn(m.num_features, generator=g))
                m.bias.copy_(0.3 * torch.randn(m.num_features, generator=g))
            if isinstance(getattr(m, "alpha", None), torch.Tensor):
                m.alpha.copy_(torch.rand(m.alpha.shape, generator=g) + 0.5)
        model.train()
        model(images)
    return model.eval()


# Every published CIFAR model and method (about 90 s on two cores, most of it the float reference).
CIFAR_CASES = ([(m, meth) for m in CIFAR for meth in ("siman", "biper")] + [("resnet20_1w32a", "biper")]
               + [("resnet20_1w1a", meth) for meth in ("recu", "irnet", "rbnn")]
               + [("resnet20_bireal_1w1a", "rbnn"), ("birealnet20", "reactnet")])


def agreement_on_1000(name, method, images, path):
    """Logits of the runtime, of libbnn and of the eval-mode model on the 1,000 images."""
    torch.manual_seed(0)
    model = calibrate(bnnkit.create_model(name, method=method, dataset="cifar10", **SETTINGS.get(method, {})), images[::5])
    _, net = export_load(model, path, (1, 3, 32, 32))
    lib = deploy.load(path, engine="libbnn")
    refs, outs, libs = [], [], []
    for chunk in images.split(250):
        with torch.no_grad():
            refs.append(model(chunk))
        outs.append(net(chunk))
        libs.append(lib(chunk))
    return torch.cat(outs), torch.cat(libs), torch.cat(refs)


@pytest.mark.slow
@pytest.mark.parametrize("name, method", CIFAR_CASES, ids=[f"{m}-{meth}" for m, meth in CIFAR_CASES])
def test_top1_agrees_on_1000_cifar10_images(tmp_path, cifar_1000, name, method):
    """The runtime computes the model's integer dot products and rounds its float32 steps exactly
    where the model does (epilogue, SiMaN mean, reductions in the model's memory order), so no
    activation near its threshold can flip: logits are equal to the last bit, hence top-1 too."""
    images, _ = cifar_1000
    out, lib, ref = agreement_on_1000(name, method, images, tmp_path / "m.bnn")
    top = ref.argmax(1)
    assert len(set(top.tolist())) > 3  # the network separates the images: agreement means something
    assert torch.equal(out.argmax(1), top)
    assert torch.equal(out, ref), f"{int((out != ref).any(1).sum())} images differ"
    # libbnn: its float32 real layers round in another order (see test_runtime_matches_eval_logits)
    assert torch.equal(lib.argmax(1), top), f"libbnn: {int((lib.argmax(1) != top).sum())} top-1 differ"
    rel = ((lib - ref).abs().amax(1) / ref.abs().amax(1)).max().item()
    assert rel <= 1e-5, rel


# ---- command lines ----------------------------------------------------------------------------
def test_cli_export_bnnkit_and_authors_checkpoints(tmp_path, capsys):
    model = build("resnet20_1w1a", "biper", "cifar10")
    ckpt = {"format": "bnnkit-checkpoint", "version": 1, "spec": model.bnnkit_spec, "state_dict": model.state_dict()}
    torch.save(ckpt, tmp_path / "ours.pth")
    assert deploy.cli_export([str(tmp_path / "ours.pth"), "-o", str(tmp_path / "ours.bnn")]) == 0
    assert "1/" in capsys.readouterr().out
    theirs = {reference_names(model)[k]: v for k, v in model.state_dict().items()}
    torch.save({"state_dict": {f"module.{k}": v for k, v in theirs.items()}}, tmp_path / "theirs.pth.tar")
    assert deploy.cli_export([str(tmp_path / "theirs.pth.tar"), "-o", str(tmp_path / "theirs.bnn"), "--method", "biper",
                              "--model", "resnet20_1w1a", "--dataset", "cifar10", "--stage", "2",
                              "--freq", str(model.bnnkit_spec["settings"]["freq"])]) == 0
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
    for f in ("ours.bnn", "theirs.bnn"):
        out = deploy.load(tmp_path / f)(x)
        assert ((out - ref).abs().max() / ref.abs().max()) < 1e-4
    # an authors' checkpoint without --method/--model, and BiPer stage 1, are refused with a message
    assert deploy.cli_export([str(tmp_path / "theirs.pth.tar"), "-o", str(tmp_path / "x.bnn")]) == 2
    assert "--method and --model" in capsys.readouterr().err
    assert deploy.cli_export([str(tmp_path / "theirs.pth.tar"), "-o", str(tmp_path / "x.bnn"), "--method", "biper",
                              "--model", "resnet20_1w1a", "--stage", "1"]) == 2
    assert "stage 2" in capsys.readouterr().err
    assert not (tmp_path / "x.bnn").exists()


def test_cli_bench_prints_tables(capsys):
    assert deploy.cli_bench(["--model", "resnet20_1w1a", "--method", "siman", "--dataset", "cifar10", "--threads", "1",
                             "--batch", "2", "--min-time", "0", "--layout", "both"]) == 0
    text = capsys.readouterr().out
    assert "| 1 | 2 | nchw |" in text and "| 1 | 2 | channels_last |" in text and "layer3_2_conv2 | 64x8x8 | 64 | 3x3/1" in text and "speed-up" in text


def test_bench_times_the_two_sides_in_alternating_turns():
    """A burst of load on a shared machine must not fall on every run of only one side."""
    from bnnkit.deploy._bench import timeit_interleaved
    calls = []
    best = timeit_interleaved([lambda: calls.append("a"), lambda: calls.append("b")], min_time=0.0, rounds=4)
    turns = [k for i, k in enumerate(calls) if i == 0 or calls[i - 1] != k]
    assert turns == ["a", "b"] * 4  # each turn: a warm-up call and at least 3 timed ones
    assert calls.count("a") == calls.count("b") == 16
    assert len(best) == 2 and all(0 <= t < 0.01 for t in best)


def test_cli_bench_times_the_same_random_model_for_the_same_seed(monkeypatch):
    import bnnkit.deploy._bench as bench

    nets = []
    monkeypatch.setattr(bench, "run_bench", lambda net, **kw: nets.append(net.state_dict()))
    for seed in ("0", "0", "1"):
        assert deploy.cli_bench(["--model", "resnet20_1w1a", "--dataset", "cifar10", "--seed", seed]) == 0
    same, other = nets[1], nets[2]
    assert all(torch.equal(nets[0][k], same[k]) for k in same)
    assert any(not torch.equal(nets[0][k], other[k]) for k in other)


def test_float_twin_has_no_binary_convs():
    model = build("resnet20_1w1a", "siman", "cifar10")
    twin = float_twin(model)
    assert not any(is_binary_conv(m) for m in twin.modules())
    assert any(is_binary_conv(m) for m in model.modules())


def test_fusion_benchmark_runs(monkeypatch, capsys):
    """benchmarks/deploy_fusion.py checks both runtimes' logits agree before it times them."""
    import runpy
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "deploy_fusion.py"
    monkeypatch.setattr("sys.argv", [str(script), "--batch", "2", "--rounds", "1", "--calls", "1", "--threads", "1"])
    old = torch.get_num_threads()
    try:
        runpy.run_path(str(script), run_name="__main__")
    finally:
        torch.set_num_threads(old)
    out = capsys.readouterr().out
    assert "resnet20_1w1a siman cifar10, batch 2" in out and "speed-up" in out
