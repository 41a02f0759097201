"""The authors' own computations, recorded in ../shared/fixtures/reference, reproduced."""
import copy
import importlib.util
import sys

import pytest
import torch
import torch.nn.functional as F

import bnnkit
from bnnkit.compat import load_reference, reference_names
from tests._shared import GOLDEN_DIR

CASES = sorted(GOLDEN_DIR.glob("*.pt"))


def _golden():
    spec = importlib.util.spec_from_file_location("golden", GOLDEN_DIR / "golden.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("golden", module)
    spec.loader.exec_module(module)
    return module


def test_all_seven_cases_are_present():
    assert len(CASES) == 7, f"expected 7 golden cases in {GOLDEN_DIR}, found {len(CASES)}"


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_golden_case(path):
    golden = _golden()
    case = golden.load_case(path)
    meta = case["meta"]

    model = load_reference(copy.deepcopy(case["state_dict"]), **meta).eval()
    with torch.no_grad():
        eval_logits = model(case["input"])

    model = load_reference(copy.deepcopy(case["state_dict"]), **meta).train()
    train_logits = model(case["input"])
    loss = F.cross_entropy(train_logits, case["target"]) + bnnkit.regularizer(model)
    loss.backward()

    names = reference_names(model)
    grads = {names[n]: p.grad for n, p in model.named_parameters() if p.grad is not None}
    after = {names[k]: v for k, v in model.state_dict().items()}
    assert golden.compare(case, eval_logits, train_logits.detach(), loss.detach(), grads, after) == []
