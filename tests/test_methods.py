"""ReCU, IR-Net and RBNN beyond the golden cases: their per-epoch schedules over every epoch of
the published recipes' lengths, RBNN's rotation update against an independent float64
implementation and its once-per-epoch trigger, the gradient of RBNN's angles, the convs IR-Net's
schedule reaches, and the authors' checkpoints (METHODS.md §1-3)."""
import math

import numpy as np
import pytest
import torch

import bnnkit
from bnnkit.compat import CheckpointError, load_reference, reference_names
from bnnkit.methods import get_method
from bnnkit.nn.layers import binary_convs
from bnnkit.nn.quantizers import QUANTIZERS
from tests.test_golden import _golden
from tests.test_golden_methods import METHODS_DIR


def f32(v: float) -> float:
    return float(np.float32(v))


def ulps(a: float, b: float) -> float:
    return abs(a - b) / float(np.spacing(np.float32(max(abs(a), abs(b)))))


# --- schedules --------------------------------------------------------------------------------

@pytest.mark.parametrize("epochs", [600, 200])  # ReCU's CIFAR-10 and ImageNet rows
def test_recu_tau_follows_its_closed_form_in_float32_every_epoch(epochs):
    """tau(e) = tau_min + (tau_max - tau_min) (e^(e/E) - 1) / (e - 1): tau(0) = tau_min, rising,
    and below tau_max at the last epoch; every value a float32."""
    method = get_method("recu")()
    taus = [method.schedule(e, epochs, tau_min=0.85, tau_max=0.99)["tau"] for e in range(epochs)]
    for e, tau in enumerate(taus):
        exact = 0.85 + 0.14 * (math.exp(e / epochs) - 1) / (math.e - 1)
        assert tau == f32(tau) and ulps(tau, exact) <= 2, (e, tau, exact)
    assert taus[0] == f32(0.85) and all(a < b for a, b in zip(taus, taus[1:])) and taus[-1] < f32(0.99)
    assert method.schedule(0, epochs) == {"tau": taus[0]}  # the authors' defaults 0.85 -> 0.99


@pytest.mark.parametrize("epochs, t_min", [(400, 1e-3), (300, 1e-1)])  # ResNet-20 1w1a trainer, VGG-Small main.py
def test_irnet_k_and_t_follow_log_up_every_epoch(epochs, t_min):
    """t(e) = 10^(log10 T_min + (1 - log10 T_min) e / E) for T_max = 10, as float32; k = 1/t while
    t < 1 (so k t = 1 up to rounding), then k = 1."""
    method = get_method("irnet")()
    lo = math.log10(t_min)
    crossing = None
    for e in range(epochs):
        s = method.schedule(e, epochs, T_min=t_min, T_max=10.0)
        exact = 10 ** (lo + (1 - lo) * e / epochs)
        assert s["t"] == f32(s["t"]) and ulps(s["t"], exact) <= 1, (e, s)
        if s["t"] < 1:
            assert s["k"] == f32(1 / np.float32(s["t"])), (e, s)
        else:
            crossing = e if crossing is None else crossing
            assert s["k"] == 1.0, (e, s)
    assert crossing == round(-lo * epochs / (1 - lo))  # t reaches 1 at e = E log10(1/T_min) / (1 - log10 T_min)


@pytest.mark.parametrize("epochs", [1000, 400, 150])  # RBNN's CIFAR-10 rows (and the cheaper 400), ImageNet
def test_rbnn_k_and_t_follow_cpt_tk_every_epoch(epochs):
    """t(e) = 10^(-2 + 3 e / E), k = max(1/t, 1), and `epoch` = e arms the update. The authors
    compute the exponent in float32 too (its rounding, up to 2^-23 * 2, grows by ln 10 in t), so t
    is within 1e-6 of the exact value rather than within an ulp."""
    method = get_method("rbnn")()
    for e in range(epochs):
        s = method.schedule(e, epochs, Tmin=1e-2, Tmax=10.0)
        exact = 10 ** (-2 + 3 * e / epochs)
        assert s["t"] == f32(s["t"]) and abs(s["t"] - exact) <= 1e-6 * exact, (e, s)
        assert s["k"] == (1.0 if s["t"] >= 1 else f32(1 / np.float32(s["t"]))), (e, s)
        assert s["epoch"] == e


@pytest.mark.parametrize("path", sorted(METHODS_DIR.glob("rbnn_*.pt")) + sorted(METHODS_DIR.glob("irnet_*.pt")),
                         ids=lambda p: p.stem)
def test_schedules_give_the_k_and_t_the_authors_trainers_recorded(path):
    """RBNN's cases record their epoch of E and the trainer's k and t: the schedule gives those
    float32 values. IR-Net's cases give k and t to the nearest round value (its t = 0.001 is the
    epoch-0 t of the ResNet-20 trainer)."""
    meta = _golden().load_case(path)["meta"]
    if meta["method"] == "rbnn":
        s = get_method("rbnn")().schedule(meta["epoch"], meta["epochs"])
        assert (s["k"], s["t"]) == (meta["k"], meta["t"])
    elif meta["t"] < 0.01:
        s = get_method("irnet")().schedule(0, 400)
        assert s["t"] == meta["t"] and s["k"] == pytest.approx(meta["k"], rel=1e-6)


# --- RBNN's rotations -------------------------------------------------------------------------

def _reference_update(x: np.ndarray, r1: np.ndarray, r2: np.ndarray):
    """METHODS.md §3.1 step 3 in float64, one filter at a time."""
    for _ in range(3):
        b = [np.sign(r1.T @ xo @ r2) for xo in x]
        d1 = sum(bo @ r2.T @ xo.T for bo, xo in zip(b, x))
        u, _, vt = np.linalg.svd(d1)
        r1 = vt.T @ u.T
        d2 = sum(xo.T @ r1 @ bo for xo, bo in zip(x, b))
        u, _, vt = np.linalg.svd(d2)
        r2 = u @ vt
    return r1, r2


def test_rbnn_rotation_update_matches_an_independent_implementation():
    torch.manual_seed(5)
    np.random.seed(5)
    w = torch.randn(8, 2, 3, 3)
    q = QUANTIZERS.get("rbnn_weight")(w, epoch=0).train()
    assert (q.a, q.b) == (3, 6)
    x = ((w - w.mean((1, 2, 3), keepdim=True)) / (w - w.mean((1, 2, 3), keepdim=True)).std((1, 2, 3), keepdim=True))
    want = _reference_update(x.double().reshape(8, 3, 6).numpy(), q.R1.double().numpy(), q.R2.double().numpy())
    q(torch.nn.Parameter(w.clone()))
    for got, ref in zip((q.R1, q.R2), want):
        assert np.allclose(got.double().numpy(), ref, atol=1e-5)
        assert torch.allclose(got @ got.t(), torch.eye(got.shape[0]), atol=1e-5)


def test_rbnn_update_runs_once_in_the_first_training_forward_of_a_scheduled_epoch():
    """configure(epoch=e) arms it; eval leaves it armed and the rotations alone; the first training
    forward updates (if e % rotation_update == 0) and disarms, as the authors' trainer resets
    `epoch` to -1 from the second batch on and before validation."""
    torch.manual_seed(0)
    np.random.seed(0)
    model = bnnkit.create_model("resnet20_1w1a", "rbnn", rotation_update=2)
    conv = model.layer2[1].conv1
    x = torch.randn(4, 3, 32, 32)
    r = [conv.weight_quantizer.R1.clone()]

    def step(mode: str) -> bool:
        getattr(model, mode)()
        with torch.set_grad_enabled(mode == "train"):
            model(x)
        r.append(conv.weight_quantizer.R1.clone())
        return not torch.equal(r[-2], r[-1])

    bnnkit.configure(model, **get_method("rbnn")().schedule(4, 10))
    assert not step("eval") and conv.weight_quantizer.epoch == 4
    assert step("train") and conv.weight_quantizer.epoch == -1
    assert not step("train")
    bnnkit.configure(model, epoch=5)  # 5 % 2 != 0: disarmed without an update
    assert not step("train") and conv.weight_quantizer.epoch == -1
    assert {c.weight_quantizer.epoch for _, c in binary_convs(model)} == {-1}


def test_rbnn_angle_gradient():
    """d/d rotate of sum(g * W_b) = sign(sin r) cos r * sum over the filter of delta * dL/dW3,
    delta = R1' X R2 - W2, dL/dW3 the triangle surrogate times g."""
    torch.manual_seed(2)
    q = QUANTIZERS.get("rbnn_weight")(torch.randn(6, 4, 3, 3), k=2.0, t=0.4)
    with torch.no_grad():
        q.rotate.copy_(torch.rand(6, 1, 1, 1) * 6 - 3)
    w = torch.nn.Parameter(torch.randn(6, 4, 3, 3) * 0.1)
    g = torch.randn(6, 4, 3, 3)
    q(w).backward(g)
    flat = w.detach().flatten(1)
    w2 = (flat - flat.mean(1, keepdim=True)) / (flat - flat.mean(1, keepdim=True)).std(1, keepdim=True)
    delta = (q.R1.t() @ w2.view(6, q.a, q.b) @ q.R2).reshape(6, -1) - w2
    r = q.rotate.detach().view(6, 1)
    w3 = w2 + torch.sin(r).abs() * delta
    dw3 = g.flatten(1) * (2.0 * (math.sqrt(2) * 0.4 - 0.16 * w3.abs())).clamp_min(0)
    want = torch.sign(torch.sin(r)) * torch.cos(r) * (delta * dw3).sum(1, keepdim=True)
    assert torch.allclose(q.rotate.grad.view(6, 1), want, rtol=1e-4, atol=1e-6)


def test_rbnn_factor_pairs_and_init():
    """a = the largest divisor of k not above sqrt(k); alpha = mean |W| of the initial weights;
    rotate = pi/2; R1, R2 orthogonal; BatchNorm2d weights 1e-8 in the CIFAR ResNet-20s."""
    from bnnkit.methods.rbnn import factor_pair

    assert [factor_pair(k) for k in (144, 27, 9 * 16, 9 * 32, 4608, 7, 1)] == [
        (12, 12), (3, 9), (12, 12), (16, 18), (64, 72), (1, 7), (1, 1)]
    model = bnnkit.create_model("resnet20_bireal_1w1a", "rbnn")
    for _, conv in binary_convs(model):
        q = conv.weight_quantizer
        assert q.a * q.b == conv.weight[0].numel()
        assert torch.all(q.rotate == torch.tensor(math.pi / 2))
        for rot in (q.R1, q.R2):
            assert torch.allclose(rot @ rot.t(), torch.eye(rot.shape[0]), atol=1e-5)
    assert {float(m.weight.detach().unique()) for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)} == {f32(1e-8)}


# --- IR-Net's scheduled convs ---------------------------------------------------------------

@pytest.mark.parametrize("name, dataset, kept", [
    ("resnet20_1w1a", "cifar10", set()), ("vgg_small_1w1a", "cifar10", set()),
    ("resnet18_1w1a", "imagenet", {"layer4.0.conv1", "layer4.0.conv2", "layer4.1.conv1", "layer4.1.conv2"})])
def test_irnet_schedule_reaches_the_convs_its_trainers_name(name, dataset, kept):
    """The ResNet-20 trainer sets k and t on layer{1,2,3}[i].conv1/.conv2, VGG-Small's main.py on
    conv0..conv5; other convs (ImageNet layer4) keep theirs. Settings given to create_model reach
    every conv (as a golden case's k and t do)."""
    model = bnnkit.create_model(name, "irnet", dataset=dataset, k=3.0, t=0.25)
    bnnkit.configure(model, **get_method("irnet")().schedule(0, 400))
    for n, conv in binary_convs(model):
        for q in (conv.weight_quantizer, conv.input_quantizer):
            assert (q.k, q.t) == ((3.0, 0.25) if n in kept else (f32(1 / np.float32(1e-3)), f32(1e-3))), n


# --- the authors' checkpoints ------------------------------------------------------------------

@pytest.mark.parametrize("method, model, extra", [
    ("recu", "resnet20_1w1a", {"alpha", "tau"}), ("irnet", "resnet18_1w1a", set()),
    ("rbnn", "vgg_small_1w1a", {"alpha", "rotate", "R1", "R2"})])
def test_authors_checkpoints_load_with_their_names_and_prefix(method, model, extra, tmp_path):
    """A DataParallel checkpoint ('module.' keys) in the authors' names loads strictly; each binary
    conv's keys beyond its weight are the authors' (ReCU's tau, a [1] tensor once trained, sets the
    layer's tau); a missing rotation is refused."""
    source = bnnkit.create_model(model, method)
    names = reference_names(source)
    state = {names[k]: v.clone() for k, v in source.state_dict().items()}
    convs = [n for n, _ in binary_convs(source)]
    if method == "recu":
        for i, n in enumerate(convs):
            state[f"{n}.tau"] = torch.tensor([0.85 + 0.001 * i])
    got = {k.rsplit(".", 1)[1] for k in state if k.rsplit(".", 1)[0] in convs} - {"weight"}
    assert got == extra
    torch.save({"epoch": 7, "state_dict": {"module." + k: v for k, v in state.items()}}, tmp_path / "ckpt.pth.tar")
    loaded = load_reference(tmp_path / "ckpt.pth.tar", method, model, 10)
    for (k, a), b in zip(source.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), k
    if method == "recu":
        assert [c.weight_quantizer.tau for _, c in binary_convs(loaded)] == [f32(0.85 + 0.001 * i) for i in range(len(convs))]
    if method == "rbnn":
        del state[f"{convs[0]}.R1"]
        with pytest.raises(CheckpointError, match="missing 1 key"):
            load_reference(state, method, model, 10)


def test_declarations_for_the_trainer():
    """Script defaults, weight-decay rules and options with the authors' names."""
    recu, irnet, rbnn = (get_method(m) for m in ("recu", "irnet", "rbnn"))
    assert recu.script_defaults("cifar")["epochs"] == 600 and recu.script_defaults("imagenet")["batch_size"] == 512
    assert irnet.script_defaults("cifar")["T_min"] == 1e-3 and rbnn.script_defaults("cifar")["model"] == "resnet20_bireal_1w1a"
    assert {o.name for o in recu.options} == {"tau_min", "tau_max"}
    assert {o.name for o in rbnn.options} == {"Tmin", "Tmax", "rotation_update", "a32"}
    rule = recu.param_group_rule("imagenet", "resnet18_1w1a")
    assert [rule(n) for n in ("conv1.weight", "layer1.0.conv1.alpha", "layer2.0.downsample.0.weight", "bn2.weight", "fc.bias")] == [
        True, True, False, False, True]
    assert all(m.param_group_rule(f, "resnet18_1w1a") is None for m in (irnet, rbnn) for f in ("cifar", "imagenet"))
    assert recu.param_group_rule("cifar", "resnet20_1w1a") is None
