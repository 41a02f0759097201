"""The learning rates, SiMaN percents and BiPer taus the trainer applies, epoch by epoch, equal
REFERENCE.md §3.3-3.4's closed forms for the published recipes (stepping the schedules, no training)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import bnnkit
from bnnkit.methods import method_of
from bnnkit.train import load_recipe, lr_per_epoch, resolve
from bnnkit.train._config import stages_of
from bnnkit.train._main import method_settings, schedule_hparams


def applied(recipe: str, stage: int | None = None) -> tuple[dict, list, list]:
    """(config, lr per epoch, method settings per epoch) exactly as bnnkit.train._main runs them."""
    stages = stages_of(load_recipe(recipe))
    cfg = resolve(stages[(stage or 1) - 1] if len(stages) > 1 else stages[0])
    model = bnnkit.create_model("resnet20_1w1a", cfg["method"], "cifar10", **method_settings(cfg))
    method = method_of(model)
    start = method.lr_start_epoch()  # BiPer's stage 2 counts from epoch 1 (Q14)
    assert start == (0 if cfg.get("stage") == 2 else -1)
    lrs = lr_per_epoch(cfg["lr"], cfg["epochs"], warm_up=cfg["warm_up"], start_epoch=start, lr_type=cfg["lr_type"],
                       authors_torch=cfg["authors_torch"], scheduler_last_epoch=method.scheduler_last_epoch(cfg["warm_up"]))
    sched = [method.schedule(e, cfg["epochs"], **schedule_hparams(cfg)) for e in range(cfg["epochs"])]
    return cfg, lrs, sched


def warm_cos(lr: float, e: int, E: int) -> float:
    return lr * (e + 1) / 5 if e <= 4 else lr * (1 + math.cos(math.pi * (e - 4) / (E - 4))) / 2


def test_siman_cifar_400_epochs():
    cfg, lrs, sched = applied("recipes/cifar10/siman_resnet20.yaml")
    assert (cfg["epochs"], cfg["lr"], cfg["warm_up"]) == (400, 0.1, True)
    for e in range(400):
        assert lrs[e] == pytest.approx(warm_cos(0.1, e, 400), rel=1e-12, abs=1e-15)
        want = float(np.float32(15 * (1 - e / 400)))
        assert sched[e]["percent"] == want
    assert lrs[4] == pytest.approx(0.1) and lrs[399] > 0
    assert sched[1]["percent"] == pytest.approx(14.9625) and sched[399]["percent"] == pytest.approx(0.0375)


def test_fresh_cosine_equals_torch_scheduler_stepping():
    """A fresh run's stepping is the same in every PyTorch version: compare with the installed one."""
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=0.1)
    sch = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=400 - 4, eta_min=0, last_epoch=-1)
    ours = lr_per_epoch(0.1, 400, warm_up=True)
    for e in range(400):
        if e < 5:
            for g in opt.param_groups:
                g["lr"] = 0.1 * (e + 1) / 5
        assert opt.param_groups[0]["lr"] == pytest.approx(ours[e], rel=1e-9)
        if e >= 4:
            opt.step()
            sch.step()


def test_biper_cifar_600_plus_300():
    cfg1, lrs1, s1 = applied("recipes/cifar10/biper_resnet18.yaml", 1)
    cfg2, lrs2, s2 = applied("recipes/cifar10/biper_resnet18.yaml", 2)
    assert (cfg1["epochs"], cfg1["lr"], cfg2["epochs"], cfg2["lr"]) == (600, 0.021, 300, 0.0037)
    for e in range(600):
        assert lrs1[e] == pytest.approx(warm_cos(0.021, e, 600), rel=1e-12, abs=1e-15)
        assert s1[e]["tau"] == float(np.float32(0.037))  # --tau sets tau_min = tau_max: constant
    assert s1[0]["tau"] == 0.03700000047683716
    T = 300 - 4
    assert lrs2[0] is None  # stage 2 starts at epoch 1 (Q14)
    for e in range(1, 300):
        want = 0.0037 * (e + 1) / 5 if e <= 4 else 0.0037 * (1 + math.cos(math.pi * (e - 3) / T)) / (1 + math.cos(math.pi / T))
        assert lrs2[e] == pytest.approx(want, rel=1e-9, abs=1e-18)
        assert s2[e]["tau"] == float(np.float32(0.0468))
    assert lrs2[299] == pytest.approx(0.0, abs=1e-18)  # last epoch: lr = 0 exactly (only BN statistics change)
    assert lrs2[5] / (0.0037 * (1 + math.cos(2 * math.pi / T)) / 2) == pytest.approx(2 / (1 + math.cos(math.pi / T)))


def test_biper_imagenet_200_plus_100():
    cfg1, lrs1, s1 = applied("recipes/imagenet/biper_resnet18.yaml", 1)
    cfg2, lrs2, s2 = applied("recipes/imagenet/biper_resnet18.yaml", 2)
    assert (cfg1["epochs"], cfg2["epochs"], cfg2["warm_up"]) == (200, 100, False)
    for e in range(200):
        assert lrs1[e] == pytest.approx(warm_cos(0.1, e, 200), rel=1e-12, abs=1e-15)
        f32 = np.float32
        a = (f32(0.99) - f32(0.85)) / (f32(math.e) - f32(1))
        assert s1[e]["tau"] == pytest.approx(float(a * np.exp(f32(e) / f32(200)) + (f32(0.85) - a)), rel=1e-6)
    assert s1[0]["tau"] == pytest.approx(0.8500000238, abs=1e-9)
    assert s1[199]["tau"] == pytest.approx(0.98889536, abs=1e-7)
    # The authors' PyTorch 1.11 (environment.yml): lr (1 + cos(pi e / E)) / 2 for e = 1..E-1, not the installed version's.
    for e in range(1, 100):
        assert lrs2[e] == pytest.approx(0.01 * (1 + math.cos(math.pi * e / 100)) / 2, rel=1e-9)
    newer = lr_per_epoch(0.01, 100, start_epoch=0, authors_torch="2.x")
    assert newer[1] == 0.01 and newer[2] == pytest.approx(0.01 * (1 + math.cos(2 * math.pi / 100)) / (1 + math.cos(math.pi / 100)))
    assert s2[5]["tau"] == 0.0


def test_no_warm_up_cosine():
    lrs = lr_per_epoch(0.1, 150)
    for e in range(150):
        assert lrs[e] == pytest.approx(0.1 * (1 + math.cos(math.pi * e / 150)) / 2, rel=1e-12)


def test_step_schedule():
    lrs = lr_per_epoch(0.1, 10, lr_type="step", lr_decay_step=[3, 6])
    assert lrs == pytest.approx([0.1] * 3 + [0.01] * 3 + [0.001] * 4)


def test_rbnn_cifar_cosine_runs_four_epochs_behind():
    """RBNN builds CosineAnnealingLR at last_epoch = -1 - 4 under --warm_up, in PyTorch 1.1 (closed form):
    lr_e = lr (1 + cos(pi (e - 8) / (E - 4))) / 2 after the warm-up, back at lr at epoch 8, not 0 at the end."""
    cfg, lrs, _ = applied("recipes/cifar10/rbnn_resnet20.yaml")
    assert (cfg["epochs"], cfg["warm_up"], cfg["authors_torch"]) == (1000, True, "1.1")
    T = 1000 - 4
    for e in range(1000):
        want = 0.1 * (e + 1) / 5 if e < 5 else 0.1 * (1 + math.cos(math.pi * (e - 8) / T)) / 2
        assert lrs[e] == pytest.approx(want, rel=1e-12, abs=1e-18)
    assert lrs[8] == pytest.approx(0.1, rel=1e-15)
    assert lrs[999] == pytest.approx(0.1 * (1 + math.cos(math.pi * 991 / 996)) / 2) and lrs[999] > 6e-6  # not 0
    # without warm-up (the ImageNet recipes) the scheduler is built at -1 and the closed form is the plain cosine
    _, lrs_in, _ = applied("recipes/imagenet/rbnn_resnet18.yaml")
    for e in range(150):
        assert lrs_in[e] == pytest.approx(0.1 * (1 + math.cos(math.pi * e / 150)) / 2, rel=1e-12, abs=1e-18)


def test_scheduler_built_early_matches_the_installed_torch():
    """The chainable stepping of a scheduler built at last_epoch = -5 (RBNN's construction) equals the
    installed PyTorch's, which keeps the group lr at its initial step (authors_torch 2.x)."""
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([{"params": [p], "initial_lr": 0.1}], lr=0.1)
    sch = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=60 - 4, eta_min=0, last_epoch=-5)
    ours = lr_per_epoch(0.1, 60, warm_up=True, authors_torch="2.x", scheduler_last_epoch=-5)
    for e in range(60):
        if e < 5:
            for g in opt.param_groups:
                g["lr"] = 0.1 * (e + 1) / 5
        assert opt.param_groups[0]["lr"] == pytest.approx(ours[e], rel=1e-9)
        if e >= 4:
            opt.step()
            sch.step()
    assert ours != lr_per_epoch(0.1, 60, warm_up=True, authors_torch="2.x")


def closed_form_lr(method: str, lr: float, e: int, E: int, warm_up: bool) -> float:
    """METHODS.md §1.3, §2.3, §3.3: warm-up lr (e+1)/5 for e < 5, then the cosine over E - 4w epochs;
    RBNN's counter runs 4 epochs behind under warm-up (its scheduler is built at start_epoch - 4)."""
    if not warm_up:
        return lr * (1 + math.cos(math.pi * e / E)) / 2
    if e < 5:
        return lr * (e + 1) / 5
    lag = 4 if method == "rbnn" else 0
    return lr * (1 + math.cos(math.pi * (e - 4 - lag) / (E - 4))) / 2


@pytest.mark.parametrize("recipe", sorted(str(p) for m in ("recu", "irnet", "rbnn")
                                          for p in __import__("pathlib").Path("recipes").glob(f"*/{m}_*.yaml")))
def test_new_methods_lr_per_epoch_equals_the_closed_form(recipe):
    cfg, lrs, _ = applied(recipe)
    assert cfg["lr_type"] == "cos"
    for e in range(cfg["epochs"]):
        want = closed_form_lr(cfg["method"], cfg["lr"], e, cfg["epochs"], cfg["warm_up"])
        assert lrs[e] == pytest.approx(want, rel=1e-9, abs=1e-15), (recipe, e)
