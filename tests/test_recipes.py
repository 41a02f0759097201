"""Every published recipe row of REFERENCE.md §7 has its YAML, with the published hyper-parameters."""
from __future__ import annotations

from pathlib import Path

import pytest

from bnnkit.train import list_recipes, load_recipe, resolve
from bnnkit.train._config import stages_of

ROOT = Path(__file__).resolve().parents[1] / "recipes"
KEYS = ("method", "model", "dataset", "epochs", "lr", "batch_size", "batch_size_test", "weight_decay", "momentum",
        "lr_type", "warm_up", "seed", "use_dali")


def cfg(name: str, stage: int | None = None) -> dict:
    stages = stages_of(load_recipe(str(ROOT / name)))
    return resolve(stages[stage - 1] if stage else stages[0])


def pick(c: dict) -> tuple:
    return tuple(c[k] for k in KEYS)


@pytest.mark.parametrize("name, want", [
    ("cifar10/siman_resnet18.yaml", ("siman", "resnet18_1w1a", "cifar10", 400, 0.1, 256, 128, 5e-4, 0.9, "cos", True, 123, False)),
    ("cifar10/siman_resnet20.yaml", ("siman", "resnet20_1w1a", "cifar10", 400, 0.1, 256, 128, 5e-4, 0.9, "cos", True, 123, False)),
    ("cifar10/siman_vgg_small.yaml", ("siman", "vgg_small_1w1a", "cifar10", 400, 0.1, 256, 128, 5e-4, 0.9, "cos", True, 123, False)),
    ("imagenet/siman_resnet18.yaml", ("siman", "resnet18_1w1a", "imagenet", 150, 0.1, 512, 256, 1e-4, 0.9, "cos", False, 0, True)),
    ("imagenet/siman_resnet34.yaml", ("siman", "resnet34_1w1a", "imagenet", 150, 0.1, 512, 256, 1e-4, 0.9, "cos", False, 0, True)),
])
def test_siman_rows(name, want):
    c = cfg(name)
    assert pick(c) == want
    assert c["sync_bn"] is False  # unsynchronised BN (the authors' DataParallel behaviour) is the default


@pytest.mark.parametrize("model", ["resnet18", "resnet20", "vgg_small"])
def test_biper_cifar_rows(model):
    s1, s2 = cfg(f"cifar10/biper_{model}_stage1.yaml"), cfg(f"cifar10/biper_{model}_stage2.yaml")
    full = f"{model}_1w1a"
    assert pick(s1) == ("biper", full, "cifar10", 600, 0.021, 256, 128, 0.0016, 0.9, "cos", True, 0, False)
    assert (s1["freq"], s1["tau"], s1["stage"]) == (20.0, 0.037, 1)
    assert pick(s2) == ("biper", full, "cifar10", 300, 0.0037, 256, 128, 0.00016, 0.9, "cos", True, 0, False)
    assert (s2["tau"], s2["stage"]) == (0.0468, 2) and "freq" not in s2["explicit"]  # f comes from stage 1's checkpoint
    assert s2["start_from"] == f"results/biper_{model}_stage1/best.pt"
    b1, b2 = cfg(f"cifar10/biper_{model}.yaml", 1), cfg(f"cifar10/biper_{model}.yaml", 2)
    assert pick(b1) == pick(s1) and pick(b2) == pick(s2) and (b1["tau"], b2["tau"]) == (0.037, 0.0468)
    text = (ROOT / f"cifar10/biper_{model}.yaml").read_text()
    if model != "resnet18":  # §7 rows 8-9: recipe unknown; rows 6 and 7's hyper-parameters, said so
        assert "rows 6 and 7" in text


@pytest.mark.parametrize("model", ["resnet18", "resnet34"])
def test_biper_imagenet_rows(model):
    s1, s2 = cfg(f"imagenet/biper_{model}_stage1.yaml"), cfg(f"imagenet/biper_{model}_stage2.yaml")
    full = f"{model}_1w1a"
    assert pick(s1) == ("biper", full, "imagenet", 200, 0.1, 512, 256, 1e-4, 0.9, "cos", True, 0, True)
    assert (s1["freq"], s1["tau_min"], s1["tau_max"], s1["print_freq"]) == (20.0, 0.85, 0.99, 250)
    assert pick(s2) == ("biper", full, "imagenet", 100, 0.01, 512, 256, 1e-4, 0.9, "cos", False, 0, True)
    assert (s2["tau_min"], s2["tau_max"], s2["stage"]) == (0.0, 0.0, 2)
    assert s2["start_from"] == f"results/{load_recipe(str(ROOT / f'imagenet/biper_{model}_stage1.yaml'))['save']}/best.pt"
    b1, b2 = cfg(f"imagenet/biper_{model}.yaml", 1), cfg(f"imagenet/biper_{model}.yaml", 2)
    assert pick(b1) == pick(s1) and pick(b2) == pick(s2)
    if model == "resnet34":
        assert "rows 10 and 11" in (ROOT / f"imagenet/biper_{model}.yaml").read_text()


@pytest.mark.parametrize("name, want", [
    *[(f"cifar10/recu_{m}.yaml", ("recu", f"{m}_1w1a", "cifar10", 600, 0.1, 256, 128, 5e-4, 0.9, "cos", True, 0, False))
      for m in ("resnet18", "resnet20", "vgg_small")],
    *[(f"imagenet/recu_{m}.yaml", ("recu", f"{m}_1w1a", "imagenet", 200, 0.1, 512, 256, 1e-4, 0.9, "cos", True, 0, False))
      for m in ("resnet18", "resnet34")],
])
def test_recu_rows(name, want):  # METHODS.md §1.3
    c = cfg(name)
    assert pick(c) == want and (c["tau_min"], c["tau_max"]) == (0.85, 0.99)


@pytest.mark.parametrize("name, want, t_min", [  # METHODS.md §2.3: the trainers' defaults
    ("cifar10/irnet_resnet20.yaml", ("irnet", "resnet20_1w1a", "cifar10", 400, 0.1, 128, 128, 1e-4, 0.9, "cos", False, 0, False), 1e-3),
    ("cifar10/irnet_resnet20_1w32a.yaml", ("irnet", "resnet20_1w32a", "cifar10", 400, 0.1, 128, 128, 1e-4, 0.9, "cos", False, 0, False), 0.1),
    ("cifar10/irnet_vgg_small.yaml", ("irnet", "vgg_small_1w1a", "cifar10", 300, 0.007, 128, 128, 1e-4, 0.9, "cos", False, 0, False), 0.1),
])
def test_irnet_rows(name, want, t_min):
    c = cfg(name)
    assert pick(c) == want and (c["T_min"], c["T_max"]) == (t_min, 10.0)


@pytest.mark.parametrize("name, want", [  # METHODS.md §3.3
    *[(f"cifar10/rbnn_{f}.yaml", ("rbnn", m, "cifar10", 1000, 0.1, 256, 128, 1e-4, 0.9, "cos", True, 1234, False))
      for f, m in (("resnet20_bireal", "resnet20_bireal_1w1a"), ("resnet20", "resnet20_1w1a"), ("resnet18", "resnet18_1w1a"),
                   ("vgg_small", "vgg_small_1w1a"))],
    *[(f"imagenet/rbnn_{m}.yaml", ("rbnn", f"{m}_1w1a", "imagenet", 150, 0.1, 512, 256, 1e-4, 0.9, "cos", False, 1234, True))
      for m in ("resnet18", "resnet34")],
])
def test_rbnn_rows(name, want):
    c = cfg(name)
    assert pick(c) == want and (c["Tmin"], c["Tmax"], c["rotation_update"], c["a32"]) == (0.01, 10.0, 1, False)


@pytest.mark.parametrize("name, model, batch, lr, epochs", [  # METHODS.md §4.10
    ("imagenet/reactnet_a.yaml", "reactnet", 256, 1.25e-3, 128),
    ("imagenet/reactnet_a_256ep.yaml", "reactnet", 256, 5e-4, 256),
    ("imagenet/reactnet_birealnet18.yaml", "birealnet18", 512, 2.5e-3, 128),
    ("imagenet/reactnet_birealnet18_256ep.yaml", "birealnet18", 512, 1e-3, 256),
])
def test_reactnet_rows(name, model, batch, lr, epochs):
    s1, s2 = cfg(name, 1), cfg(name, 2)
    for c, step, wd in ((s1, 1, 1e-5), (s2, 2, 0.0)):
        assert pick(c) == ("reactnet", model, "imagenet", epochs, lr, batch, batch, wd, 0.9, "linear", False, 0, False)
        assert (c["step"], c["optimizer"], c["loss"], c["teacher"], c["carry_weights"]) == (step, "adam", "kd", "resnet34", False)
    stages = load_recipe(str(ROOT / name))["stages"]
    assert stages[1]["start_from"] == "last"  # the last epoch's checkpoint, not the best (Q14)


def test_reactnet_cifar_recipe_says_it_is_not_published():
    s1, s2 = cfg("cifar10/reactnet_birealnet20.yaml", 1), cfg("cifar10/reactnet_birealnet20.yaml", 2)
    assert (s1["model"], s1["step"], s2["step"], s1["optimizer"], s1["lr_type"]) == ("birealnet20", 1, 2, "adam", "linear")
    assert (s1["weight_decay"], s2["weight_decay"]) == (1e-5, 0.0)
    assert "NOT A PUBLISHED ROW" in (ROOT / "cifar10/reactnet_birealnet20.yaml").read_text()


def test_every_recipe_resolves_and_is_listed():
    names = list_recipes()
    # SiMaN rows; BiPer stage 1, stage 2 and both, per row; ReCU, IR-Net (the rows whose trainer is
    # published: ResNet-20 1/1 and 1/32, VGG-Small) and RBNN rows; ReActNet's four two-step rows and
    # its CIFAR recipe
    assert len(names) == 5 + 3 * 3 + 2 * 3 + 5 + 3 + 6 + 4 + 1
    for name in names:
        for stage in stages_of(load_recipe(str(ROOT / f"{name}.yaml"))):
            resolve(stage)
