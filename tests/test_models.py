"""Every registered model with every method that builds it: counts, forward, backward, values."""
import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import bnnkit
from bnnkit.nn import _packed_eval, _packed_train
from bnnkit.nn.layers import binary_convs
from bnnkit.methods import METHODS
from bnnkit.models import _MODELS

# REFERENCE.md §2.8: (model, family) -> {method: (all parameters, trainable parameters)}.
# ReCU, IR-Net, RBNN (METHODS.md §1.2, §2.2, §3.2 and the authors' model files): every parameter
# trains, so all = trainable. ReCU = BiPer's trainable count (BiPer's CIFAR convs add the unused
# beta, ReCU's do not). IR-Net has no alpha: BiPer's count minus one alpha per binary output
# channel, plus the real 1x1 shortcut convs + BNs of its CIFAR ResNet-18 (173,824) and the unused
# bn3 BatchNorm1d(1000) of its ImageNet ResNets (2,000). RBNN = alpha + rotate per binary output
# channel on SiMaN's CIFAR ResNet-18s (binary shortcuts, no B), BiPer's VGG and ImageNet ResNets
# (+ bn3), and a ResNet-20 of 269,850 weights (IR-Net's count).
PARAMETER_COUNTS = {
    ("resnet20_1w1a", "cifar"): {"siman": (538_458, 271_194), "biper": (271_194, 270_522), "recu": (270_522, 270_522),
                                 "irnet": (269_850, 269_850), "rbnn": (271_194, 271_194)},
    ("resnet20_bireal_1w1a", "cifar"): {"rbnn": (271_194, 271_194)},
    ("resnet20_1w32a", "cifar"): {"biper": (270_522, 270_522), "irnet": (269_850, 269_850)},
    ("resnet18_1w1a", "cifar"): {"siman": (22_337_226, 11_179_722), "biper": (11_008_842, 11_005_002),
                                 "recu": (11_005_002, 11_005_002), "irnet": (11_174_986, 11_174_986),
                                 "rbnn": (11_184_458, 11_184_458)},
    ("resnet18A_1w1a", "cifar"): {"siman": (1_466_442, 736_330), "biper": (725_418, 724_394),
                                  "recu": (724_394, 724_394), "rbnn": (737_578, 737_578)},
    ("resnet18B_1w1a", "cifar"): {"siman": (5_589_866, 2_800_490), "biper": (2_758_058, 2_756_138),
                                  "recu": (2_756_138, 2_756_138), "rbnn": (2_802_858, 2_802_858)},
    ("resnet18C_1w1a", "cifar"): {"siman": (5_853_322, 2_932_874), "biper": (2_888_522, 2_886_474),
                                  "recu": (2_886_474, 2_886_474), "rbnn": (2_935_370, 2_935_370)},
    ("vgg_small_1w1a", "cifar"): {"siman": (9_234_698, 4_663_562), "biper": (4_663_434, 4_661_770),
                                  "recu": (4_661_770, 4_661_770), "irnet": (4_660_106, 4_660_106),
                                  "rbnn": (4_663_434, 4_663_434)},
    ("resnet18_1w1a", "imagenet"): {"siman": (22_683_688, 11_698_216), "biper": (11_694_376, 11_694_376),
                                    "recu": (11_694_376, 11_694_376), "irnet": (11_692_536, 11_692_536),
                                    "rbnn": (11_700_216, 11_700_216)},
    ("resnet34_1w1a", "imagenet"): {"siman": (42_900_008, 21_813_800), "biper": (21_806_248, 21_806_248),
                                    "recu": (21_806_248, 21_806_248), "irnet": (21_800_696, 21_800_696),
                                    "rbnn": (21_815_800, 21_815_800)},
    ("resnet18_1w32a", "imagenet"): {"irnet": (11_692_536, 11_692_536)},
    ("resnet34_1w32a", "imagenet"): {"irnet": (21_800_696, 21_800_696)},
    ("mobilenet_1w1a", "imagenet"): {"biper": (8_768_296, 8_768_296)},
    # METHODS.md §4.6 (the same in both steps: test_reactnet_counts_in_both_steps)
    ("reactnet", "imagenet"): {"reactnet": (29_343_592, 29_343_592)},
    ("birealnet18", "imagenet"): {"reactnet": (11_704_424, 11_704_424)},
    ("birealnet34", "imagenet"): {"reactnet": (21_827_432, 21_827_432)},
}
DATASET = {"cifar": "cifar10", "imagenet": "imagenet"}
PUBLISHED = ("siman", "biper", "recu", "irnet", "rbnn", "reactnet")
UNPUBLISHED = {("birealnet20", "cifar")}  # ReActNet's blocks at ResNet-20's size, for quick CIFAR runs
# ReCU builds BiPer's variants (BiPer forked its code), so also the two models only BiPer published
BIPER_ONLY = {("resnet20_1w32a", "cifar"), ("mobilenet_1w1a", "imagenet")}
# Settings that exercise each method's whole forward: SiMaN's clipping, BiPer's binary stage, ReCU's
# clamp (tau = 1 clamps nothing), RBNN's rotation update in the first training forward.
TEST_SETTINGS = {"siman": {"percent": 5.0}, "biper": {"stage": 2}, "recu": {"tau": 0.9}, "rbnn": {"epoch": 0},
                 "reactnet": {"step": 2}}
SCALED = ("xnor", "reactnet")  # binary weights ±(mean |w|) per output channel: the float path, not packed


def unused_parameters(model) -> set[str]:
    """Parameters of modules the authors define but never call (IR-Net's and RBNN's ImageNet bn3)."""
    return {f"{m}.{n}" for m in getattr(model, "unused_modules", ()) for n, _ in model.get_submodule(m).named_parameters()}


@pytest.fixture(autouse=True)
def _seed_numpy():
    """RBNN draws its initial rotations from numpy's generator, as the authors' scipy ortho_group
    does: seed it with torch's, so that every test builds the same models in any order."""
    np.random.seed(0)


def _buildable():
    for name, families in sorted(_MODELS.items()):
        for family, entry in sorted(families.items()):
            for method in METHODS.names():
                if METHODS.get(method).architecture in entry.architectures:
                    yield name, family, method


BUILDABLE = list(_buildable())


def test_every_published_model_has_its_counts_checked():
    published = {(n, f, m) for n, f, m in BUILDABLE if m in PUBLISHED and not (m == "recu" and (n, f) in BIPER_ONLY)
                 and (n, f) not in UNPUBLISHED}
    assert published == {(n, f, m) for (n, f), ms in PARAMETER_COUNTS.items() for m in ms}


@pytest.mark.parametrize("name,family,method", [(n, f, m) for (n, f), ms in PARAMETER_COUNTS.items() for m in ms])
def test_parameter_counts_equal_the_spec(name, family, method):
    model = bnnkit.create_model(name, method, dataset=DATASET[family])
    all_params = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert (all_params, trainable) == PARAMETER_COUNTS[(name, family)][method]


@pytest.mark.parametrize("name,binary,tensors,entries", [("reactnet", 28_253_184, 202, 298),
                                                         ("birealnet18", 10_985_472, 126, 186),
                                                         ("birealnet34", 21_086_208, 238, 346)])
def test_reactnet_counts_in_both_steps(name, binary, tensors, entries):
    """METHODS.md §4.6: parameters, binary-conv latent weights, parameter tensors and state entries,
    equal in both steps; step 2's latent weights start at U[0, 0.001)."""
    total = PARAMETER_COUNTS[(name, "imagenet")]["reactnet"][0]
    for step in (1, 2):
        model = bnnkit.create_model(name, "reactnet", dataset="imagenet", step=step)
        convs = binary_convs(model)
        assert sum(p.numel() for p in model.parameters()) == total
        assert sum(c.weight.numel() for _, c in convs) == binary
        assert (len(list(model.parameters())), len(model.state_dict())) == (tensors, entries)
        if step == 2:
            assert all(0 <= float(c.weight.detach().min()) and float(c.weight.detach().max()) < 0.001 for _, c in convs)


@pytest.mark.parametrize("name,side", [("reactnet", 96), ("birealnet18", 64), ("birealnet20", 32)])
def test_reactnet_models_take_any_side_divisible_by_32(name, side):
    model = bnnkit.create_model(name, "reactnet", num_classes=7, step=2).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, side, side)).shape == (1, 7)


def _input(batch=2):
    return torch.randn(batch, 3, 32, 32)  # ImageNet models too: their pooling head is made adaptive below


def _small(model):
    # The ImageNet head pools 7x7 for 224px inputs; at 32px the last map is 1x1.
    if hasattr(model, "avgpool") and isinstance(model.avgpool, torch.nn.AvgPool2d):
        model.avgpool = torch.nn.AdaptiveAvgPool2d(1)
    return model


def _forbid_host_round_trips(monkeypatch):
    def forbidden(what):
        def fail(*args, **kwargs):
            raise AssertionError(f"{what} called inside the forward/backward pass")
        return fail

    for attr in ("item", "cpu", "numpy", "tolist", "cuda"):
        monkeypatch.setattr(torch.Tensor, attr, forbidden(f"Tensor.{attr}"))


@pytest.mark.parametrize("name,family,method", BUILDABLE, ids=[f"{f}-{n}-{m}" for n, f, m in BUILDABLE])
def test_forward_backward_binary_values_and_no_host_sync(name, family, method, monkeypatch):
    """Train and eval passes run; quantized weights and inputs take only the promised values;
    every trainable parameter gets a finite gradient; and no numpy round-trip, host
    synchronisation or .cuda() call happens inside forward or backward."""
    torch.manual_seed(0)
    settings = TEST_SETTINGS.get(method, {})
    model = _small(bnnkit.create_model(name, method, dataset=DATASET[family], num_classes=10, **settings))
    convs = dict(binary_convs(model))
    seen = {}
    for n, conv in convs.items():
        conv.weight_quantizer.register_forward_hook(lambda m, i, o, n=n: seen.setdefault(n, {}).__setitem__("w", o.detach()))
        conv.input_quantizer.register_forward_hook(lambda m, i, o, n=n: seen.setdefault(n, {}).__setitem__("x", o.detach()))
    x, y = _input(), torch.tensor([1, 2])
    # CPU-only by design, tested below and in test_packed_train: not the path a GPU takes
    packed, packed_train = _packed_eval.set_enabled(False), _packed_train.set_enabled(False)
    try:
        with monkeypatch.context() as patch:
            _forbid_host_round_trips(patch)
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            model.eval()
            with torch.no_grad():
                model(x)
    finally:
        _packed_eval.set_enabled(packed)
        _packed_train.set_enabled(packed_train)
    assert torch.isfinite(loss)
    assert set(seen) == set(convs)
    for conv_name, out in seen.items():
        conv = convs[conv_name]
        if conv.binary_input:
            assert set(out["x"].unique().tolist()) <= {-1.0, 0.0, 1.0}, conv_name
        wb, w = out["w"], conv.weight.detach()
        if method in SCALED:  # ±(mean |w|) per output channel
            scale = w.abs().mean(dim=(1, 2, 3), keepdim=True)
            assert torch.allclose(wb.abs(), torch.where(w == 0, 0.0, scale.expand_as(wb))), conv_name
        elif method == "irnet":  # ±2^n per output channel (Libra-PB's scale; 1 for ordinary weights)
            scale = wb.abs().amax(dim=(1, 2, 3), keepdim=True)
            assert (torch.log2(scale) == torch.log2(scale).round()).all(), conv_name
            assert ((wb.abs() == scale) | (wb == 0)).all(), conv_name
        elif method == "rbnn":  # ±1, and 0 where W2 + |sin(rotate)| (R1' X R2 - W2) rounds to exactly 0
            assert set(wb.unique().tolist()) <= {-1.0, 0.0, 1.0}, conv_name
            assert torch.equal(wb, conv.binary_weight()), conv_name
        else:  # ±1, and 0 only where the latent weight is exactly 0 (sign(0) = 0, as published)
            assert ((wb == 1) | (wb == -1) | ((wb == 0) & (w == 0))).all(), conv_name
    unused = unused_parameters(model)
    for pname, p in model.named_parameters():
        if p.requires_grad and pname not in unused:
            assert p.grad is not None, f"{pname} received no gradient"
            assert torch.isfinite(p.grad).all(), pname


def _eval_logits(model, x, packed: bool):
    """model(x) without autograd, with the packed eval path on or off."""
    old = _packed_eval.set_enabled(packed)
    try:
        with torch.no_grad():
            return model(x)
    finally:
        _packed_eval.set_enabled(old)


def _ran_packed(conv, key: str) -> bool:
    """Whether packed eval holds packed weights for this conv (not the marker of weights found
    not to be exactly ±1)."""
    return isinstance(conv.__dict__.get(key), _packed_eval._PackedWeights)


@pytest.mark.parametrize("name,family,method", BUILDABLE, ids=[f"{f}-{n}-{m}" for n, f, m in BUILDABLE])
def test_packed_eval_gives_the_float_eval_bits(name, family, method):
    """On CPU, eval runs binary convs on packed bits (bnnkit.nn._packed_eval): the same integers, the
    same `* alpha` rounding, the same memory layout, hence the same output bits, in both input
    layouts; it is used wherever the weights are exactly ±1 and the inputs sign() values, and
    applies the BatchNorm and residual add of conv_bn in its epilogue."""
    torch.manual_seed(0)
    settings = TEST_SETTINGS.get(method, {})
    model = _small(bnnkit.create_model(name, method, dataset=DATASET[family], num_classes=10, **settings))
    model.train()
    model(torch.randn(8, 3, 32, 32))  # running statistics that are not the initial 0 and 1
    model.eval()
    x = torch.randn(3, 3, 32, 32)
    for layout in (torch.contiguous_format, torch.channels_last):
        xl = x.contiguous(memory_format=layout)
        assert torch.equal(_eval_logits(model, xl, False), _eval_logits(model, xl, True))
    packed = [n for n, c in binary_convs(model) if _ran_packed(c, "_packed_weights") or _ran_packed(c, "_packed_weights_bn")]
    # conv_bn's BatchNorm (and residual) went into the kernel's epilogue, with the same bits
    folded = [n for n, c in binary_convs(model) if _ran_packed(c, "_packed_weights_bn")]
    # XNOR's weights are ±mean|w|, and a random weight can be exactly 0 (sign 0): those stay float;
    # ReActNet's a_o sign(W) runs packed as ±1 with a_o the prescale (its quantizer's sign_and_scale)
    def signs(c):
        factored = c.weight_quantizer.sign_and_scale(c.weight.detach())
        return c.binary_weight() if factored is None else factored[0]

    eligible = [n for n, c in binary_convs(model) if c.binary_input and bool((signs(c).abs() == 1).all())]
    sign_input = [n for n, c in binary_convs(model) if c.binary_input]
    assert packed == eligible and (method == "xnor" or len(eligible) >= len(sign_input) - 1)
    assert method in SCALED or len(folded) >= len(eligible) // 2


@pytest.mark.parametrize("method,settings", [("siman", {}), ("biper", {"stage": 2})])
def test_packed_eval_follows_new_scales_and_statistics(method, settings):
    """After a step that moves alpha and the BatchNorm statistics but no weight sign, the packed
    eval keeps the packed weights and takes the new constants: still the float path's bits."""
    torch.manual_seed(0)
    model = bnnkit.create_model("resnet20_1w1a", method, **settings)
    model.train()
    model(torch.randn(8, 3, 32, 32))
    model.eval()
    x = torch.randn(2, 3, 32, 32)

    _eval_logits(model, x, True)
    before = {n: c.__dict__["_packed_weights_bn"].conv for n, c in binary_convs(model)
              if _ran_packed(c, "_packed_weights_bn")}
    assert before
    with torch.no_grad():
        for i, (_, conv) in enumerate(binary_convs(model)):
            conv.alpha.mul_(1.5 + 0.1 * i)
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.add_(0.05)
                m.running_var.mul_(1.3)
    assert torch.equal(_eval_logits(model, x, True), _eval_logits(model, x, False))
    for name, conv in binary_convs(model):
        if name in before:
            now = conv.__dict__["_packed_weights_bn"].conv
            assert now is not before[name] and now.wk is before[name].wk, name  # new constants, same bits
            assert not torch.equal(now.scale, before[name].scale), name


def test_conv_bn_folds_only_what_it_reproduces():
    """conv_bn folds the BatchNorm into the packed kernel only when nothing can tell: a forward hook
    on the BatchNorm, or a BatchNorm left in training mode, takes the path as written (the hook
    runs, the running statistics update), with the same outputs as the float path."""
    torch.manual_seed(0)
    model = bnnkit.create_model("resnet20_1w1a", "siman")
    model.train()
    model(torch.randn(8, 3, 32, 32))
    model.eval()
    x = torch.randn(2, 3, 32, 32)

    for change in ("none", "hook", "bn_training"):
        float_model, packed_model = copy.deepcopy(model), copy.deepcopy(model)
        calls = []
        for m in (float_model, packed_model):
            bn = m.layer1[0].bn1
            if change == "hook":
                bn.register_forward_hook(lambda mod, inp, out: calls.append(out.shape))
            if change == "bn_training":
                bn.train()
        assert torch.equal(_eval_logits(float_model, x, False), _eval_logits(packed_model, x, True)), change
        conv = packed_model.layer1[0].conv1
        folded = _ran_packed(conv, "_packed_weights_bn")
        assert folded == (change == "none"), change
        if change == "hook":
            assert len(calls) == 2  # once per model
        if change == "bn_training":
            assert torch.equal(float_model.layer1[0].bn1.running_mean, packed_model.layer1[0].bn1.running_mean)
            assert not torch.equal(packed_model.layer1[0].bn1.running_mean, model.layer1[0].bn1.running_mean)
        assert _ran_packed(packed_model.layer1[0].conv2, "_packed_weights_bn")  # its neighbour folds


@pytest.mark.parametrize("name,method,settings", [("resnet20_1w1a", "siman", {}), ("resnet18_1w1a", "biper", {"stage": 2})])
def test_conv_bn_applies_the_block_nonlinearity_in_the_kernel(monkeypatch, name, method, settings):
    """In packed eval the PReLU (SiMaN) and Hardtanh (BiPer, F.hardtanh) after conv_bn run in the
    kernel's epilogue: the modules and functions are not called, and the logits keep their bits.
    A nonlinearity with a forward hook runs as written, its hook with it."""
    torch.manual_seed(0)
    model = bnnkit.create_model(name, method, **settings)
    model.train()
    model(torch.randn(8, 3, 32, 32))
    model.eval()
    x = torch.randn(2, 3, 32, 32)
    calls = {"prelu": 0, "hardtanh": 0}
    prelu_forward, hardtanh = torch.nn.PReLU.forward, F.hardtanh

    def counting_prelu(self, t):
        calls["prelu"] += 1
        return prelu_forward(self, t)

    def counting_hardtanh(t, *args, **kwargs):
        calls["hardtanh"] += 1
        return hardtanh(t, *args, **kwargs)

    monkeypatch.setattr(torch.nn.PReLU, "forward", counting_prelu)
    monkeypatch.setattr(F, "hardtanh", counting_hardtanh)
    want = _eval_logits(model, x, False)
    unfused = dict(calls)
    assert max(unfused.values()) >= 8  # every block's nonlinearity ran
    calls.update(prelu=0, hardtanh=0)
    assert torch.equal(_eval_logits(model, x, True), want)
    assert calls == {"prelu": 0, "hardtanh": 0}, calls

    if method == "siman":  # a hook makes the PReLU observable: it runs as a module again
        hooked = copy.deepcopy(model)
        seen = []
        hooked.layer1[0].nonlinear1.register_forward_hook(lambda mod, inp, out: seen.append(out.clone()))
        assert torch.equal(_eval_logits(hooked, x, True), want)
        assert calls["prelu"] == 1 and len(seen) == 1


def _counting_biper_quantizer_calls(monkeypatch, model, x):
    """A function that evaluates `model` on x with packed eval, returns how many times BiPer's
    weight quantizer ran meanwhile, and checks the logits against the float path's."""
    from bnnkit.methods.biper import BiperWeight

    calls = []
    forward = BiperWeight.forward
    monkeypatch.setattr(BiperWeight, "forward", lambda self, w: calls.append(self) or forward(self, w))

    def packed_calls() -> int:
        calls.clear()
        out = _eval_logits(model, x, True)
        n = len(calls)
        assert torch.equal(out, _eval_logits(model, x, False))
        return n

    return packed_calls


def test_packed_eval_reuses_a_pure_quantizers_signs_only_for_the_same_weights(monkeypatch):
    """BiPer's weight quantizer is pure: packed eval skips it while the latent weights keep their
    bits, and calls it again after any change: an in-place edit through .data (which autograd's
    version counter does not see), a flipped sign bit, a new setting, a hook on the quantizer.
    Every eval keeps the float path's bits."""
    torch.manual_seed(0)
    model = bnnkit.create_model("resnet20_1w1a", "biper", stage=2)
    model.train()
    model(torch.randn(8, 3, 32, 32))
    model.eval()
    x = torch.randn(2, 3, 32, 32)
    packed_calls = _counting_biper_quantizer_calls(monkeypatch, model, x)
    convs = [c for _, c in binary_convs(model)]

    assert packed_calls() == len(convs)  # first eval: every quantizer runs
    assert packed_calls() == 0           # unchanged weights: none does
    w = convs[3].weight
    w.data[0, 0, 0, 0] = -w.data[0, 0, 0, 0]  # flips that weight's sign: through .data, no version bump
    assert packed_calls() == 1
    w.data[1, 0, 0, 0] = w.data[1, 0, 0, 0].item()  # the same value written again: no call
    assert packed_calls() == 0
    w.data[2, 0, 0, 0] = torch.nextafter(w.data[2, 0, 0, 0], torch.tensor(float("inf")))  # a new weight, the same sign
    assert packed_calls() == 1
    assert packed_calls() == 0  # the cache now knows these weights give those signs
    convs[5].weight_quantizer.configure(freq=21.0)
    assert packed_calls() == 1
    convs[7].weight_quantizer.register_forward_hook(lambda *a: None)
    assert packed_calls() == 1 and packed_calls() == 1  # a hooked quantizer runs every time


def test_packed_eval_remembers_that_stage_one_weights_are_real(monkeypatch):
    """BiPer's stage 1 quantizer gives real values: packed eval finds that once per set of
    weights, and afterwards leaves each conv to the float path at once (one quantizer call a conv,
    the float path's own), until the weights or settings change; stage 2 then packs as usual."""
    torch.manual_seed(0)
    model = bnnkit.create_model("resnet20_1w1a", "biper", stage=1).eval()
    x = torch.randn(2, 3, 32, 32)
    packed_calls = _counting_biper_quantizer_calls(monkeypatch, model, x)
    convs = [c for _, c in binary_convs(model)]

    assert packed_calls() > len(convs)   # first eval: the packed tries run the quantizer too
    assert packed_calls() == len(convs)  # then only the float path's call
    convs[2].weight.data[0, 0, 0, 0] += 1.0
    assert packed_calls() > len(convs) and packed_calls() == len(convs)
    bnnkit.configure(model, stage=2)
    assert packed_calls() == len(convs) and packed_calls() == 0  # stage 2: packed, then cached


def _random_bn(channels: int) -> torch.nn.BatchNorm2d:
    bn = torch.nn.BatchNorm2d(channels).eval()
    with torch.no_grad():
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.1, 3.0)
        bn.weight.normal_()  # negative scales too: the pooling must come first
        bn.bias.normal_()
    return bn


@pytest.mark.parametrize("after", ["none", "bn", "bn-hardtanh", "bn-prelu", "bn-F.hardtanh", "bn-relu"])
@pytest.mark.parametrize("pool", [torch.nn.MaxPool2d(2, 2), torch.nn.MaxPool2d(3, 2, padding=1),
                                  torch.nn.MaxPool2d(2, 2, ceil_mode=True), torch.nn.MaxPool2d(3, 1, dilation=2),
                                  torch.nn.MaxPool2d((3, 2), (1, 2))],
                         ids=["2x2", "3x3pad", "ceil", "dilated", "3x2/1x2"])
def test_conv_pool_pools_channels_last_with_the_same_bits(pool, after):
    """conv_pool in packed eval: the binary conv writes channels-last, the max-pooling (with the
    BatchNorm and nonlinearity after it, natively where it can) runs there, and the result comes
    back NCHW with the bits of act(bn(pool(conv(x)))); a hooked pool, a channels-last input or
    training take the path as written."""
    from bnnkit.nn.layers import conv_pool

    torch.manual_seed(0)
    method = METHODS.get("biper")(stage=2)
    conv = method.conv(32, 48, 3, 1, 1).eval()
    bn = None if after == "none" else _random_bn(48)
    act = {"none": None, "bn": None, "bn-hardtanh": torch.nn.Hardtanh(-0.5, 0.75), "bn-F.hardtanh": F.hardtanh,
           "bn-relu": torch.nn.ReLU()}.get(after)
    if after == "bn-prelu":
        act = torch.nn.PReLU(48)
        with torch.no_grad():
            act.weight.normal_()

    def reference(x):
        y = pool(conv(x))
        y = y if bn is None else bn(y)
        return y if act is None else act(y)

    x = torch.randn(4, 32, 15, 15)
    old = _packed_eval.set_enabled(False)
    try:
        with torch.no_grad():
            want = reference(x)  # the float conv, pooled NCHW by PyTorch
    finally:
        _packed_eval.set_enabled(old)
    assert conv.__dict__.get("_packed_weights") is None
    with torch.no_grad():
        got = conv_pool(conv, pool, x, bn, act)
    assert torch.equal(got.view(torch.int32), want.view(torch.int32)) and got.is_contiguous()
    assert _ran_packed(conv, "_packed_weights")  # it did run on packed bits
    seen = []
    hooked = copy.deepcopy(pool)
    hooked.register_forward_hook(lambda mod, inp, out: seen.append(inp[0].is_contiguous()))
    with torch.no_grad():
        assert torch.equal(conv_pool(conv, hooked, x, bn, act), want)
        xl = x.contiguous(memory_format=torch.channels_last)
        assert torch.equal(conv_pool(conv, pool, xl, bn, act), reference(xl))
    assert seen == [True]  # the hook saw the NCHW conv output, as written


@pytest.mark.parametrize("act", ["none", "prelu", "hardtanh"])
def test_native_max_pool_picks_and_rounds_as_pytorch(act):
    """max_pool_to_nchw against max_pool2d + batch_norm + the nonlinearity on values that tell the
    rules apart: NaNs (which one wins), -0.0 against +0.0 (the first of equal values), infinities,
    and BatchNorm constants with negative scales."""
    from bnnkit.native import kernels as _native

    torch.manual_seed(1)
    x = torch.randn(3, 24, 9, 10)
    specials = torch.tensor([float("nan"), -0.0, 0.0, float("inf"), -float("inf"), -0.0])
    idx = torch.randint(0, x.numel(), (300,))
    x.view(-1)[idx] = specials[torch.randint(0, len(specials), (300,))]
    x.view(-1)[idx[:5]] = torch.tensor([float("nan")]).view(torch.int32).add(torch.arange(5, dtype=torch.int32)).view(torch.float32)
    bn = _random_bn(24)
    nl, module = None, None
    if act == "prelu":
        module = torch.nn.PReLU(24)
        with torch.no_grad():
            module.weight.normal_()
        nl = _native.Nonlinearity.prelu(module.weight, 24)
    elif act == "hardtanh":
        module, nl = torch.nn.Hardtanh(-0.3, 0.6), _native.Nonlinearity.hardtanh(-0.3, 0.6)
    from bnnkit.native.affine import bn_affine

    for kernel, stride in (((2, 2), (2, 2)), ((3, 2), (2, 1)), ((1, 1), (1, 1))):
        with torch.no_grad():
            want = bn(F.max_pool2d(x, kernel, stride))
            want = want if module is None else module(want)
            got = _native.max_pool_to_nchw(x.contiguous(memory_format=torch.channels_last), kernel, stride, 2,
                                           *bn_affine(bn), nl)
            plain = _native.max_pool_to_nchw(x.contiguous(memory_format=torch.channels_last), kernel, stride, 1)
        assert torch.equal(got.view(torch.int32), want.view(torch.int32)), (kernel, stride)
        assert torch.equal(plain.view(torch.int32), F.max_pool2d(x, kernel, stride).view(torch.int32))
    with pytest.raises(_native.DeployFormatError, match="channels-last"):
        _native.max_pool_to_nchw(x, (2, 2), (2, 2), 1)
    # the binding refuses a window that would read past the input, and lengths that disagree
    xl, out = x.contiguous(memory_format=torch.channels_last), torch.empty(3, 24, 5, 5)
    for Ho, in_len in ((5, xl.numel()), (4, xl.numel() + 1)):
        with pytest.raises(ValueError, match="pool: inconsistent arguments"):
            _native.lib().pool(1, (xl.data_ptr(), in_len, out.data_ptr(), 3 * 24 * Ho * 5, 3, 24, 9, 10, Ho, 5,
                                   2, 2, 2, 2, 0, 0, 0, 0, 0))


def test_unknown_names_list_the_valid_ones():
    with pytest.raises(bnnkit.UnknownNameError, match="valid models: .*resnet20_1w1a"):
        bnnkit.create_model("resnet21_1w1a")
    with pytest.raises(bnnkit.UnknownNameError, match="valid methods: biper, irnet, rbnn, reactnet, recu, siman, ste, xnor"):
        bnnkit.create_model("resnet20_1w1a", method="sman")
    with pytest.raises(bnnkit.UnknownNameError, match="only for architecture"):
        bnnkit.create_model("mobilenet_1w1a", method="siman")
    with pytest.raises(TypeError, match="has no setting freq"):
        bnnkit.create_model("resnet20_1w1a", method="siman", freq=20.0)


def test_dataset_picks_the_family_of_shared_names():
    cifar = bnnkit.create_model("resnet18_1w1a", "biper")
    imagenet = bnnkit.create_model("resnet18_1w1a", "biper", dataset="imagenet")
    assert cifar.conv1.kernel_size == (3, 3) and cifar.bnnkit_spec["num_classes"] == 10
    assert imagenet.conv1.kernel_size == (7, 7) and imagenet.fc.out_features == 1000


def test_seeded_construction_is_reproducible():
    models = []
    for _ in range(2):
        torch.manual_seed(123)
        models.append(bnnkit.create_model("resnet20_1w1a", "biper"))
    for (k, a), b in zip(models[0].state_dict().items(), models[1].state_dict().values()):
        assert torch.equal(a, b), k


def test_configure_sets_method_state_on_every_binary_layer():
    model = bnnkit.create_model("resnet20_1w1a", "biper", freq=20.0)
    bnnkit.configure(model, tau=0.5, stage=2)
    assert {c.weight_quantizer.tau for _, c in binary_convs(model)} == {0.5}
    assert {c.weight_quantizer.stage for _, c in binary_convs(model)} == {2}
    with pytest.raises(TypeError, match="percent"):
        bnnkit.configure(model, percent=3.0)
    with pytest.raises(ValueError, match="stage must be 1 or 2"):
        bnnkit.configure(model, stage=3)
    # 1w32a convs keep tau = 1 under the schedule, as the authors' trainer leaves them (Q12)
    model = bnnkit.create_model("resnet20_1w32a", "biper")
    bnnkit.configure(model, tau=0.037)
    assert {c.weight_quantizer.tau for _, c in binary_convs(model)} == {1.0}


def test_siman_weight_code_is_the_larger_half_of_each_row():
    torch.manual_seed(0)
    model = bnnkit.create_model("resnet20_1w1a", "siman").train()
    model(torch.randn(2, 3, 32, 32))
    conv = model.layer2[0].conv2
    standardized = conv.weight.detach()
    standardized = (standardized - standardized.mean(dim=(1, 2, 3), keepdim=True)).abs().flatten(1)
    k = standardized.shape[1]
    code = conv.weight_quantizer.code
    assert (code.sum(dim=1) == k // 2).all()
    # every +1 entry is larger than every -1 entry of its row
    for row, bits in zip(standardized, code):
        assert row[bits == 1].min() > row[bits == 0].max()
