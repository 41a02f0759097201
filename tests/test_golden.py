"""The authors' own computations, recorded in ../shared/fixtures/reference, reproduced."""
import copy
import importlib.util
import os
import sys

import pytest
import torch
import torch.nn.functional as F

import bnnkit
from bnnkit.compat import load_reference, reference_names
from tests._shared import GOLDEN_DIR

CASES = sorted(GOLDEN_DIR.glob("*.pt"))
# scripts/gpu_check.sh runs these on CUDA (BNNKIT_TEST_DEVICE=cuda), with the same tolerances
DEVICE = torch.device(os.environ.get("BNNKIT_TEST_DEVICE", "cpu"))


def _golden():
    spec = importlib.util.spec_from_file_location("golden", GOLDEN_DIR / "golden.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("golden", module)
    spec.loader.exec_module(module)
    return module


def test_all_seven_cases_are_present():
    assert len(CASES) == 7, f"expected 7 golden cases in {GOLDEN_DIR}, found {len(CASES)}"


def _layout_spread(case: dict) -> float:
    """How far this machine's own float32 rounding moves the case's training-mode logits: the same
    model on an NCHW and on a channels-last input (two summation orders of oneDNN's convs)."""
    outs = []
    for fmt in (torch.contiguous_format, torch.channels_last):
        model = load_reference(copy.deepcopy(case["state_dict"]), **case["meta"]).train().to(memory_format=fmt)
        with torch.no_grad():
            outs.append(model(case["input"].contiguous(memory_format=fmt)))
    return float((outs[0] - outs[1]).norm() / outs[0].norm())


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_golden_case(path):
    golden = _golden()
    case = golden.load_case(path)
    meta = case["meta"]

    model = load_reference(copy.deepcopy(case["state_dict"]), **meta).eval().to(DEVICE)
    with torch.no_grad():
        eval_logits = model(case["input"].to(DEVICE)).cpu()

    model = load_reference(copy.deepcopy(case["state_dict"]), **meta).train().to(DEVICE)
    train_logits = model(case["input"].to(DEVICE))
    loss = F.cross_entropy(train_logits, case["target"].to(DEVICE)) + bnnkit.regularizer(model)
    loss.backward()

    names = reference_names(model)
    grads = {names[n]: p.grad.cpu() for n, p in model.named_parameters() if p.grad is not None}
    after = {names[k]: v.cpu() for k, v in model.state_dict().items()}
    train_logits, loss = train_logits.detach().cpu(), loss.detach().cpu()
    errors = golden.compare(case, eval_logits, train_logits, loss, grads, after)
    # BiPer stage 1's untrained ImageNet ResNet-18 in training mode is chaotic: 2 activations within
    # rounding of zero flip sign in layer1 and the flips grow to a different output by layer4. The
    # recorded values hold on the AVX-512 CPUs they were checked on; an AVX2-only CPU's oneDNN
    # rounds otherwise. There, and only when the eval logits match and this machine's own two
    # layouts already disagree beyond the tolerance, the train-side mismatch is an expected failure.
    if (errors and not any(e.startswith("eval logits") for e in errors) and DEVICE.type == "cpu"
            and torch.backends.cpu.get_cpu_capability() != "AVX512"):
        spread = _layout_spread(case)
        if spread > golden.TOLERANCE["logits"]:
            pytest.xfail(f"{path.stem}: training-mode logits move by a relative {spread:.2f} between two float32 "
                         f"summation orders on this {torch.backends.cpu.get_cpu_capability()} CPU, so the recorded "
                         f"rounding cannot be reproduced here ({len(errors)} train-side mismatches; eval logits match)")
    assert errors == []
