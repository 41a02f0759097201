"""ReCU, IR-Net, RBNN and ReActNet against their authors' own computations (../shared/fixtures/methods),
run exactly as tests/test_golden.py runs SiMaN's and BiPer's cases (METHODS.md §1.4, §2.4, §3.4, §4;
ReActNet's cases carry its step and the authors' model constructor arguments in meta)."""
import copy

import pytest
import torch
import torch.nn.functional as F

import bnnkit
from bnnkit.compat import load_reference, reference_names
from tests._shared import SHARED
from tests.test_golden import _golden

METHODS_DIR = SHARED / "fixtures" / "methods"
CASES = sorted(p for m in ("recu", "irnet", "rbnn", "reactnet") for p in METHODS_DIR.glob(f"{m}_*.pt"))


def test_the_public_cases_are_present():
    names = {p.stem for p in CASES}
    assert {f"{m}_{c}" for m in ("recu", "irnet", "rbnn")
            for c in ("resnet20_cifar10", "vgg_small_cifar10", "resnet18_imagenet")} <= names
    assert {f"reactnet_{m}_step{s}" for m in ("a", "birealnet18") for s in (1, 2)} <= {n.rsplit("_", 1)[0] for n in names}


def _trainer_state(model, meta: dict, training: bool):
    """The state the authors' trainers leave a model in for this case: RBNN's `epoch` is the
    epoch in the training copy and -1 in the eval copy (their loop resets it before validation);
    the case's k and t reach every binary conv through load_reference's settings."""
    if meta["method"] == "rbnn" and not training:
        bnnkit.configure(model, epoch=-1)
    return model


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_golden_case(path):
    golden = _golden()
    case = golden.load_case(path)
    meta = case["meta"]

    model = _trainer_state(load_reference(copy.deepcopy(case["state_dict"]), **meta), meta, training=False).eval()
    with torch.no_grad():
        eval_logits = model(case["input"])

    model = _trainer_state(load_reference(copy.deepcopy(case["state_dict"]), **meta), meta, training=True).train()
    train_logits = model(case["input"])
    loss = F.cross_entropy(train_logits, case["target"])  # plain cross-entropy: no method here has a regulariser
    loss.backward()

    names = reference_names(model)
    grads = {names[n]: p.grad for n, p in model.named_parameters() if p.grad is not None}
    after = {names[k]: v for k, v in model.state_dict().items()}
    assert golden.compare(case, eval_logits, train_logits.detach(), loss.detach(), grads, after) == []
