"""The packed training forward (bnnkit.nn._packed_train): the float path's bits, forward and backward."""
import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import bnnkit
from bnnkit.nn import _packed_train, functional, layers
from bnnkit.nn.layers import BinaryConv2d, binary_convs
from bnnkit.methods import METHODS

from .test_models import BUILDABLE, DATASET, TEST_SETTINGS, _small


@pytest.fixture(autouse=True)
def _seed_numpy():
    """RBNN draws its initial rotations from numpy's generator, as the authors' scipy ortho_group
    does: seed it with torch's, so that every test builds the same models in any order."""
    np.random.seed(0)


def _with_packed(enabled: bool, fn):
    old = _packed_train.set_enabled(enabled)
    try:
        return fn()
    finally:
        _packed_train.set_enabled(old)


def _record_packed(monkeypatch) -> list:
    """The layers whose training forward took the packed path."""
    took = []
    real = layers.packed_train_forward

    def spy(layer, xb, wb):
        out = real(layer, xb, wb)
        if out is not None:
            took.append(layer)
        return out

    monkeypatch.setattr(layers, "packed_train_forward", spy)
    return took


def _step(model, x, y):
    """One training forward and backward: logits, every gradient, every buffer and parameter after."""
    model.train()
    logits = model(x)
    F.cross_entropy(logits, y).backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    state = {n: t.detach().clone() for n, t in model.state_dict().items()}
    return logits.detach(), grads, state


def _assert_same(a, b, what):
    (la, ga, sa), (lb, gb, sb) = a, b
    assert torch.equal(la, lb), f"{what}: logits differ"
    assert ga.keys() == gb.keys(), what
    for n in gb:
        assert torch.equal(ga[n], gb[n]), f"{what}: gradient of {n} differs by {(ga[n] - gb[n]).abs().max()}"
    for n in sb:
        assert torch.equal(sa[n], sb[n]), f"{what}: {n} differs after the step"


@pytest.mark.parametrize("name,family,method", BUILDABLE, ids=[f"{f}-{n}-{m}" for n, f, m in BUILDABLE])
def test_packed_training_gives_the_float_training_bits(name, family, method, monkeypatch):
    """Every model x method, both layouts: logits, gradients, running statistics and SiMaN's
    in-place weights are the same bits with the packed forward as with conv2d; it runs wherever
    the weights are exactly ±1 and the inputs sign() values."""
    torch.manual_seed(0)
    settings = TEST_SETTINGS.get(method, {})
    model = _small(bnnkit.create_model(name, method, dataset=DATASET[family], num_classes=10, **settings))
    x, y = torch.randn(3, 3, 32, 32), torch.tensor([1, 2, 3])
    took = _record_packed(monkeypatch)
    for layout in (torch.contiguous_format, torch.channels_last):
        base = copy.deepcopy(model).to(memory_format=layout)
        xl = x.contiguous(memory_format=layout)
        took.clear()
        packed = _with_packed(True, lambda: _step(copy.deepcopy(base), xl, y))
        assert packed[0].is_contiguous(memory_format=layout) or packed[0].dim() != 4
        probe = copy.deepcopy(base)  # quantizers with side effects (RBNN's rotation update) leave base as it was
        eligible = [c for _, c in binary_convs(probe) if c.binary_input
                    and bool((c.weight_quantizer(c.weight.detach().clone()).abs() == 1).all())]
        assert len(took) == len(eligible), layout
        if method in ("siman", "biper") and any(c.binary_input for _, c in binary_convs(base)):
            assert took, "the published 1w1a models train on the packed path"
        _assert_same(packed, _with_packed(False, lambda: _step(copy.deepcopy(base), xl, y)), f"{name} {layout}")


def _layer(method: str = "biper", in_ch: int = 16, out_ch: int = 8, **conv) -> BinaryConv2d:
    torch.manual_seed(0)
    settings = {"stage": 2} if method == "biper" else {}
    m = METHODS.get(method)(**settings)
    return BinaryConv2d(in_ch, out_ch, conv.pop("kernel", 3), method=m, **conv).train()


def _layer_step(layer: BinaryConv2d, x: torch.Tensor, packed: bool):
    layer = copy.deepcopy(layer)
    x = x.clone().requires_grad_()
    g = torch.randn(layer(x.detach()).shape, generator=torch.Generator().manual_seed(1))

    def run():
        out = layer(x)
        out.backward(g)
        return out.detach(), x.grad, layer.weight.grad, None if layer.alpha is None else layer.alpha.grad

    return _with_packed(packed, run)


@pytest.mark.parametrize("conv", [dict(padding=1), dict(stride=2, padding=1), dict(padding=2, dilation=2),
                                  dict(kernel=1), dict(padding=1, groups=2)],
                         ids=["pad1", "stride2", "dilated", "1x1", "groups"])
def test_packed_training_layer_matches_conv2d_with_ties_and_scales(conv, monkeypatch):
    """One layer: inputs exactly at the threshold (sign 0), alphas of both signs over many
    magnitudes (y comes back exactly from y * alpha for alpha's gradient), every geometry."""
    layer = _layer(**conv)
    with torch.no_grad():
        layer.alpha.copy_((torch.tensor([1e-12, -3e-7, 0.5, -1.0, 7.0, 2e5, -9e11, 1e17])).view(-1, 1, 1))
    x = torch.randn(4, 16, 9, 11)
    x[:, :, ::3] = 0  # BiPer's input quantizer: sign(0) = 0, a tie the kernel removes
    took = _record_packed(monkeypatch)
    a, b = _layer_step(layer, x, True), _layer_step(layer, x, False)
    assert took
    for u, v in zip(a, b):
        assert torch.equal(u, v)


def test_packed_training_reuses_a_layers_conv_only_while_its_signs_hold():
    """Across steps the layer keeps its last packed conv: new alpha on the same signs reuses the
    weight buffers, flipped signs rebuild them; each output stays conv2d's bits."""
    layer = _layer(padding=1)
    ref = copy.deepcopy(layer)
    x = torch.randn(4, 16, 9, 11)
    convs = []
    for step in range(4):
        with torch.no_grad():
            for m in (layer, ref):
                m.alpha.mul_(1.5)
                if step >= 2:
                    m.weight[step] *= -1  # BiPer's square wave is odd: this output channel's signs flip
        out = _with_packed(True, lambda: layer(x))
        assert torch.equal(out, _with_packed(False, lambda: ref(x))), step
        convs.append(layer.__dict__["_packed_train_conv"])
    assert convs[1].wk is convs[0].wk and not torch.equal(convs[1].pre, convs[0].pre)
    assert convs[2].wk is not convs[1].wk and convs[3].wk is not convs[2].wk
    assert not torch.equal(convs[3].w_bits, convs[2].w_bits)


@pytest.mark.parametrize("case", ["zero_weight", "zero_alpha", "huge_alpha", "real_input", "eager_kernels"])
def test_packed_training_falls_back_where_it_cannot_reproduce(case, monkeypatch):
    """A weight whose sign is 0, an alpha the recovery cannot invert, a real-valued input, or the
    eager kernels: conv2d runs instead, with its own results."""
    layer = _layer(binary_input=case != "real_input")
    with torch.no_grad():
        if case == "zero_weight":
            layer.weight[0, 0, 0, 0] = 0.0  # sign(sin(0)) = 0
        if case == "zero_alpha":
            layer.alpha[3] = 0.0
        if case == "huge_alpha":
            layer.alpha[3] = 2.0 ** 61
    took = _record_packed(monkeypatch)
    x = torch.randn(2, 16, 6, 6)
    kernels = functional.kernels_in_use()
    if case == "eager_kernels":
        functional.set_kernels("eager")
    try:
        a, b = _layer_step(layer, x, True), _layer_step(layer, x, False)
    finally:
        functional.set_kernels(kernels)
    assert not took, case
    for u, v in zip(a, b):
        assert torch.equal(u, v)


def test_packed_training_saves_one_tensor_fewer():
    """conv2d then `* alpha` keeps the conv's output for alpha's gradient; the packed path
    recovers it from its own output, which the next BatchNorm keeps anyway."""
    layer = _layer("siman")
    x = torch.randn(8, 16, 16, 16, requires_grad=True)

    def saved_outputs_sized():
        saved = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
            out = layer(x)
        own = out.untyped_storage().data_ptr()
        return {t.untyped_storage().data_ptr() for t in saved
                if t.numel() == out.numel() and t.untyped_storage().data_ptr() != own}

    assert len(_with_packed(False, saved_outputs_sized)) == 1  # conv2d's output, before `* alpha`
    assert len(_with_packed(True, saved_outputs_sized)) == 0


@pytest.mark.parametrize("spatial", [1, 5])
@pytest.mark.parametrize("kernel", [1, 3])
def test_packed_training_output_takes_conv2d_layout(spatial, kernel):
    """The output's strides are conv2d's, for every pairing of input and weight layouts, ambiguous
    ones included (a 1x1 map or kernel is contiguous both ways): later ops choose their kernels,
    hence their roundings, by them."""
    base = _layer("siman", kernel=kernel, padding=kernel // 2)
    for x_layout in (torch.contiguous_format, torch.channels_last):
        for w_layout in (torch.contiguous_format, torch.channels_last):
            layer = copy.deepcopy(base).to(memory_format=w_layout)
            x = torch.randn(3, 16, spatial, spatial).contiguous(memory_format=x_layout)
            outs = [_with_packed(p, lambda: layer(x)) for p in (True, False)]
            assert outs[0].stride() == outs[1].stride(), (x_layout, w_layout)
            assert torch.equal(outs[0], outs[1])


def test_packed_training_output_modified_in_place_is_refused_not_silently_wrong():
    """alpha's gradient is computed from the saved output: an in-place change to it before the
    backward must raise autograd's error, never give a wrong gradient."""
    layer = _layer("siman", padding=1)
    x = torch.randn(2, 16, 6, 6, requires_grad=True)
    out = _with_packed(True, lambda: layer(x))
    out.add_(1.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.sum().backward()
