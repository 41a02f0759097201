"""ReActNet beyond its golden cases (METHODS.md §4): the authors' checkpoints of both steps, the
architecture's doubling blocks and shortcuts, the weight-decay groups and learning rates of
train.py, and how step 2 starts from step 1."""
import warnings

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


# --- the training procedure (METHODS.md §4.7, §4.8) ---------------------------------------------

from bnnkit.methods import get_method  # noqa: E402
from bnnkit.train import build_optimizer, lr_per_epoch, param_groups, resolve  # noqa: E402
from tests.test_golden_methods import METHODS_DIR  # noqa: E402


@pytest.mark.parametrize("epochs,lr", [(128, 1.25e-3), (256, 5e-4), (5, 2.5e-3)])
def test_lr_per_epoch_is_the_authors_lambdalr_stepped_before_each_epoch(epochs, lr):
    """Q2: the authors' loop calls scheduler.step() at the top of every epoch, so epoch e trains with
    lr (1 - (e + 1)/E), the last one with 0: run their loop with torch's own LambdaLR."""
    cfg = resolve({"method": "reactnet", "dataset": "imagenet", "epochs": epochs, "lr": lr})
    assert (cfg["optimizer"], cfg["lr_type"]) == ("adam", "linear")
    method = get_method("reactnet")
    ours = lr_per_epoch(cfg["lr"], epochs, lr_type=cfg["lr_type"], steps_first=method.lr_steps_first,
                        start_epoch=method("imagenet", step=2).lr_start_epoch())
    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0 - step / epochs)
    theirs = []
    for _ in range(epochs):
        with warnings.catch_warnings():  # "lr_scheduler.step() before optimizer.step()": what their loop does
            warnings.simplefilter("ignore")
            sched.step()
        theirs.append(opt.param_groups[0]["lr"])
    assert ours == theirs
    assert ours[0] == lr * (1 - 1 / epochs) and ours[-1] == 0.0


def test_adam_as_the_authors_build_it():
    cfg = resolve({"method": "reactnet", "dataset": "imagenet", "weight_decay": 1e-5, "lr": 1.25e-3})
    model = bnnkit.create_model("birealnet18", "reactnet", dataset="imagenet")
    opt = build_optimizer(model, cfg)
    assert type(opt) is torch.optim.Adam
    assert [g["weight_decay"] for g in opt.param_groups] == [0.0, 1e-5]  # [rest], [decayed], in that order
    d = opt.defaults
    assert (d["betas"], d["eps"], d["amsgrad"]) == ((0.9, 0.999), 1e-8, False)


@pytest.mark.parametrize("model_name,step,tensors,elements", [
    ("reactnet", 1, 110, 28_285_792), ("reactnet", 2, 79, None), ("birealnet18", 1, 68, None), ("birealnet18", 2, 68, None)])
def test_weight_decay_groups_are_train_pys(model_name, step, tensors, elements):
    """Q7: decayed = ndim 4 or 'conv' in the name: the stem, the binary convs (not ReActNet-A's flat
    step-2 weights), every LearnableBias and Bi-Real's downsample conv; BN, PReLU and fc are not."""
    model = bnnkit.create_model(model_name, "reactnet", dataset="imagenet", step=step)
    rest, decayed = param_groups(model, 1e-5, 1e-3)
    assert (rest["weight_decay"], decayed["weight_decay"]) == (0.0, 1e-5)
    assert len(decayed["params"]) == tensors
    if elements is not None:
        assert sum(p.numel() for p in decayed["params"]) == elements
    biases = [n for n in decayed["names"] if n.endswith(".bias") and ".move" in n]
    assert len(biases) == (78 if model_name == "reactnet" else 48)
    assert not any(".bn" in n or "prelu" in n or n.startswith("fc.") for n in decayed["names"])


@pytest.mark.parametrize("path", sorted(METHODS_DIR.glob("reactnet_*.pt")), ids=lambda p: p.stem)
def test_the_decay_rule_is_ndim_4_or_conv_over_the_authors_names_and_shapes(path):
    """The rule, written over names, against train.py's own test on the authors' recorded keys and shapes."""
    case = torch.load(path, weights_only=True)
    rule = get_method("reactnet").param_group_rule("imagenet", case["meta"]["model"])
    params = [(k, s) for k, s, kind in case["spec"] if not kind.startswith("bn_running") and kind != "bn_num_batches_tracked"]
    for key, shape in params:
        assert rule(key) == (len(shape) == 4 or "conv" in "module." + key), key


def _step1_then_step2(model_name, **hparams):
    from bnnkit.train import model_from_checkpoint
    torch.manual_seed(0)
    step1 = bnnkit.create_model(model_name, "reactnet", dataset="imagenet", num_classes=10, step=1)
    with torch.no_grad():
        for p in step1.parameters():
            p.add_(torch.rand_like(p))
    ckpt = {"spec": step1.bnnkit_spec, "state_dict": step1.state_dict()}
    step2 = model_from_checkpoint(ckpt, "step1.pt", step=2)
    bnnkit.methods.method_of(step2).on_stage_start(step2, source_settings=step1.bnnkit_spec["settings"], **hparams)
    return step1, step2


def test_reactnet_a_step2_restarts_its_binary_weights_as_the_authors_strict_false_leaves_them():
    """Q1: everything but the 31 binary-conv weights comes from step 1; those start at U[0, 0.001)."""
    step1, step2 = _step1_then_step2("reactnet")
    convs = {f"{n}.weight" for n, _ in binary_convs(step2)}
    assert len(convs) == 31
    s1, s2 = step1.state_dict(), step2.state_dict()
    for k in s1:
        if k in convs:
            assert float(s2[k].min()) >= 0 and float(s2[k].max()) < 0.001 and not torch.equal(s1[k], s2[k]), k
        else:
            assert torch.equal(s1[k], s2[k]), k


@pytest.mark.parametrize("model_name,hparams", [("reactnet", {"carry_weights": True}), ("birealnet18", {})])
def test_step2_carries_every_weight_over_where_the_keys_match_or_when_asked(model_name, hparams):
    step1, step2 = _step1_then_step2(model_name, **hparams)
    for (k, a), b in zip(step1.state_dict().items(), step2.state_dict().values()):
        assert torch.equal(a, b), k
    assert all(c.weight_quantizer.name == "reactnet_hard_binary_weight" for _, c in binary_convs(step2))


# --- export -------------------------------------------------------------------------------------

def _randomized(name, step=2, classes=10):
    torch.manual_seed(0)
    model = bnnkit.create_model(name, "reactnet", num_classes=classes, step=step)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if ".move" in n or n.startswith("move"):
                p.normal_(0, 0.2)  # RSign thresholds and RPReLU shifts away from 0
            elif "prelu" in n:
                p.uniform_(-0.5, 0.5)
    model.train()
    model(torch.randn(8, 3, 64, 64))  # BatchNorm statistics that are not the initial ones
    return model.eval()


@pytest.mark.parametrize("name", ["birealnet20", "birealnet18", "reactnet"])
def test_step2_models_export_to_the_packed_runtime_with_the_same_logits(name, tmp_path):
    """RSign's shift, RPReLU, the doubling concat and the pooled shortcuts run in the .bnn graph; the
    per-channel mean |W| is each conv's prescale: the runtime's logits are the model's, bit for bit."""
    from bnnkit import deploy
    model = _randomized(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a latent weight exactly 0 is handled exactly
        info = deploy.export(model, tmp_path / "m.bnn", example_input_shape=(1, 3, 64, 64))
    assert info["binary_convs"] == len(binary_convs(model))
    net = deploy.load(tmp_path / "m.bnn")
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    for layout in (torch.contiguous_format, torch.channels_last):
        xl = x.contiguous(memory_format=layout)
        with torch.no_grad():
            want = model(xl)
        assert torch.equal(net(xl), want)


def test_a_step1_model_is_not_exported(tmp_path):
    from bnnkit import deploy
    from bnnkit.errors import DeployExportError
    with pytest.raises(DeployExportError, match="step 2"):
        deploy.export(_randomized("birealnet20", step=1), tmp_path / "m.bnn", example_input_shape=(1, 3, 32, 32))


# --- both steps end to end ----------------------------------------------------------------------

def test_two_steps_with_a_teacher_then_eval_and_export(tmp_path):
    """The CIFAR recipe on 128 images with a small random torchvision teacher and the authors' loss
    (kd only): both steps run, the distillation loss is logged, the lr follows Q2, step 2 starts
    from step 1's last checkpoint with every Bi-Real weight (its one epoch has lr 0, so its
    parameters are still step 1's), eval reproduces the log and the export the model's logits."""
    import csv
    import json

    import torchvision

    from bnnkit import deploy
    from bnnkit.train import model_from_checkpoint, read_checkpoint
    from tests._train_fixtures import CIFAR, cli

    torch.manual_seed(0)
    teacher = torchvision.models.get_model("resnet18", weights=None, num_classes=10)
    torch.save(teacher.state_dict(), tmp_path / "teacher.pth")
    tiny = ["--data_path", CIFAR, "--subset", "128", "--val_subset", "128", "-b", "64", "-bt", "128", "--workers", "1",
            "--threads", "1", "--print_freq", "1", "--set", "tensorboard=false"]
    code, out, err = cli("train", "recipes/cifar10/reactnet_birealnet20.yaml", *tiny, "--results_dir", tmp_path,
                         "--epochs", "2", "--set", "step2.epochs=1", "--loss", "kd", "--teacher", "resnet18",
                         "--teacher_weights", tmp_path / "teacher.pth")
    assert code == 0, err
    run = tmp_path / "reactnet_birealnet20"

    def rows(path):
        with open(path, newline="") as fh:
            return list(csv.DictReader(fh))

    s1, s2 = rows(run / "step1" / "metrics.csv"), rows(run / "step2" / "metrics.csv")
    assert [int(r["epoch"]) for r in s1] == [0, 1] and [int(r["epoch"]) for r in s2] == [0]
    assert [float(r["lr"]) for r in s1] == [1e-3 * (1 - 1 / 2), 0.0] and float(s2[0]["lr"]) == 0.0
    for r in s1 + s2:  # the loss is the distillation loss alone
        assert float(r["train_kd"]) > 0 and float(r["train_loss"]) == pytest.approx(float(r["train_kd"]), rel=1e-6)
    log2 = (run / "step2" / "log.txt").read_text()
    assert "distilling from resnet18" in log2 and f"reactnet step 2 starts from {run / 'step1' / 'last.pt'}" in log2

    c1, c2 = read_checkpoint(str(run / "step1" / "last.pt")), read_checkpoint(str(run / "step2" / "last.pt"))
    assert (c1["spec"]["settings"]["step"], c2["spec"]["settings"]["step"]) == (1, 2)
    m1, m2 = model_from_checkpoint(c1), model_from_checkpoint(c2)
    for (n, a), b in zip(m1.named_parameters(), m2.parameters()):
        assert torch.equal(a, b), n

    code, out, err = cli("eval", run / "step2" / "best.pt", "--data_path", CIFAR, "--val_subset", "128", "--json")
    assert code == 0, err
    assert json.loads(out)["top1"] == pytest.approx(float(s2[0]["val_top1"]))

    assert deploy.cli_export([str(run / "step2" / "last.pt"), "-o", str(tmp_path / "r.bnn")]) == 0
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want = m2.eval()(x)
    assert torch.equal(deploy.load(tmp_path / "r.bnn")(x), want)
