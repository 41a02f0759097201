"""The speed levers compute what the plain path computes: compiled kernels, bf16 autocast,
channels_last, and the benchmark itself (its figures are printed, never asserted)."""
import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import bnnkit
from bnnkit.nn import functional
from bnnkit.analysis.bench import float_twin, main as bench_main
from bnnkit.nn.layers import BinaryConv2d


def _step(model, x, y, autocast=False):
    model.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        out = model(x)
        loss = F.cross_entropy(out.float(), y) + bnnkit.regularizer(model)
    loss.backward()
    return out.detach().float(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("method", ["siman", "biper"])
def test_compiled_kernels_match_eager(method):
    torch.manual_seed(0)
    model = bnnkit.create_model("resnet20_1w1a", method).train()
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    want_out, want_grads = _step(copy.deepcopy(model), x, y)
    if not functional.set_compiled(True):
        pytest.fail("torch.compile should work on this machine (gcc is present)")
    try:
        out, grads = _step(copy.deepcopy(model), x, y)
    finally:
        functional.set_compiled(False)
    assert torch.allclose(out, want_out, rtol=1e-4, atol=1e-4)
    # A gradient that is zero in exact arithmetic (alpha right before a training-mode batch norm)
    # is rounding noise: hold it to the size of the largest gradient. golden.py's floor (1e-4 of
    # the largest) is for the same eager arithmetic; the compiled kernels sum in another order, and
    # on an AVX2-only CPU their noise in SiMaN ResNet-20's alphas reached 1.2e-6 of the largest
    # gradient (a relative 1.3 % of those alphas' 1.6e-3 norms), so the floor here is 1e-3.
    floor = 1e-3 * max(g.norm() for g in want_grads.values())
    for name, g in want_grads.items():
        assert (grads[name] - g).norm() <= 1e-2 * max(g.norm(), floor), name  # golden.py's tolerance


@pytest.mark.parametrize("method", ["siman", "biper", "ste", "xnor"])
def test_bf16_autocast_trains_every_method(method):
    """Under bf16 autocast, 40 optimiser steps fit a small fixed batch (the loss falls by 40%).
    (After 30 steps STE's loss was at 0.62 of its start on an AVX2-only CPU, whose bf16 is emulated
    and rounds differently; after 40 every method was at 0.45 or below there.) 16x16 images: the
    emulated bf16 took a minute a method at 32x32, the suite's largest cost."""
    torch.manual_seed(0)
    model = bnnkit.create_model("resnet20_1w1a", method).train()
    x, y = torch.randn(16, 3, 16, 16), torch.arange(16) % 10
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.01)
    losses = []
    for _ in range(40):
        optimizer.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = F.cross_entropy(model(x).float(), y)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    assert min(losses[-5:]) < 0.6 * losses[0], losses


def test_channels_last_gives_the_same_logits():
    torch.manual_seed(0)
    model = bnnkit.create_model("resnet20_1w1a", "biper", stage=2).eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        want = model(x)
        got = model.to(memory_format=torch.channels_last)(x.contiguous(memory_format=torch.channels_last))
    assert torch.allclose(got, want, atol=1e-4)


def test_float_twin_has_no_binary_layers_and_same_shapes():
    model = bnnkit.create_model("resnet18A_1w1a", "siman")
    twin = float_twin(model)
    assert not any(isinstance(m, BinaryConv2d) for m in twin.modules())
    assert any(isinstance(m, BinaryConv2d) for m in model.modules())  # the original is untouched
    x = torch.randn(2, 3, 32, 32)
    assert twin.eval()(x).shape == model.eval()(x).shape


def test_bench_runs_and_prints_its_ratios(capsys, monkeypatch):
    assert bench_main(["--models", "resnet20_1w1a", "--methods", "biper2", "--batch", "8", "--rounds", "1", "--warmup", "0", "--matmul_size", "512"]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("resnet20_1w1a"))
    assert "biper s2" in row and len(row.split()) == 13 and row.count("x") >= 3  # t ratio, ev gain, 1st gain
    assert "GFLOP/s" in out and "activation kernels=native" in out
    import bnnkit.analysis.bench as bench
    seen = []
    real_case = bench.bench_case
    monkeypatch.setattr(bench, "bench_case", lambda name, method, settings, *a: seen.append(settings) or real_case(name, method, settings, *a))
    assert bench_main(["--models", "resnet20_1w1a", "--methods", "siman", "--batch", "4", "--rounds", "1", "--warmup", "0",
                       "--matmul_size", "256", "--kernels", "eager", "--percent", "7.5"]) == 0
    assert seen == [{"percent": 7.5}]  # the recipe's clipping, applied to SiMaN's model
    out = capsys.readouterr().out
    assert "activation kernels=eager" in out and "SiMaN percent=7.5" in out
    with pytest.raises(SystemExit):
        bench_main(["--percent", "50"])
    assert "--percent must lie in [0, 50)" in capsys.readouterr().err
    assert functional.kernels_in_use() == "eager"
    functional.set_kernels("native")


def test_bench_selects_cases_by_method_and_refuses_models_it_has_no_cases_for(capsys, monkeypatch):
    import bnnkit.analysis.bench as bench

    seen = []
    monkeypatch.setattr(bench, "matmul_gflops", lambda n: 100.0)
    monkeypatch.setattr(bench, "binary_conv_rate", lambda threads: None)
    monkeypatch.setattr(bench, "bench_case", lambda name, method, settings, *a, **k: seen.append((name, method, settings)) or {})
    monkeypatch.setattr(bench, "format_row", lambda r, peak: "")
    monkeypatch.setattr(bench, "missed_targets", lambda r: {})
    for methods, expected in ((["biper"], [("biper", {"stage": 1}), ("biper", {"stage": 2})]),
                              (["biper2", "siman"], [("siman", {}), ("biper", {"stage": 2})])):
        seen.clear()
        assert bench_main(["--models", "vgg_small_1w1a", "--methods", *methods, "--profile", "never"]) == 0
        assert seen == [("vgg_small_1w1a", m, s) for m, s in expected]
    with pytest.raises(SystemExit):
        bench_main(["--models", "resnet34_1w1a"])  # an ImageNet network, asked for at CIFAR resolution
    err = capsys.readouterr().err
    assert "no cifar10 model resnet34_1w1a" in err and "with --dataset cifar10" in err and "resnet20_1w1a" in err
    seen.clear()  # at ImageNet resolution: ReActNet's networks, and only the methods that build them
    assert bench_main(["--dataset", "imagenet", "--models", "reactnet", "resnet18_1w1a", "--methods", "reactnet", "siman",
                       "--profile", "never"]) == 0
    assert seen == [("reactnet", "reactnet", {"step": 1}), ("reactnet", "reactnet", {"step": 2}),
                    ("resnet18_1w1a", "siman", {})]
    with pytest.raises(SystemExit):
        bench_main(["--dataset", "imagenet", "--models", "reactnet", "--methods", "siman"])
    assert "none of the picked methods builds reactnet" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bench_main(["--methods", "xnor"])
    assert "invalid choice: 'xnor'" in capsys.readouterr().err


def test_bench_at_imagenet_resolution_times_the_imagenet_network(capsys, monkeypatch):
    import bnnkit.analysis.bench as bench

    x, y = bench.bench_input("imagenet", 3)
    assert x.shape == (3, 3, 224, 224) and int(y.max()) < 1000 and bench.bench_input("cifar10", 2)[0].shape == (2, 3, 32, 32)
    # ReActNet declares its two networks (Method.bench_models): the ImageNet defaults hold them, the CIFAR ones not
    assert bench.default_models("imagenet") == ("resnet18_1w1a", "reactnet", "birealnet18")
    assert bench.default_models("cifar") == ("resnet20_1w1a", "resnet18_1w1a", "vgg_small_1w1a")
    built = []
    real_create = __import__("bnnkit").create_model
    monkeypatch.setattr("bnnkit.create_model", lambda *a, **k: built.append(k.get("dataset")) or real_create(*a, **k))
    assert bench_main(["--dataset", "imagenet", "--models", "birealnet18", "--methods", "reactnet1", "--batch", "1",
                       "--rounds", "1", "--warmup", "0", "--matmul_size", "256", "--profile", "never"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("imagenet input") and "batch 1," in out and built == ["imagenet"]
    row = next(line for line in out.splitlines() if line.startswith("birealnet18"))
    assert "reactnet s1" in row and len(row.split()) == 13


def test_bench_names_missed_targets_and_profiles_them_with_the_native_kernels(capsys):
    from bnnkit.analysis.bench import missed_targets

    def result(model, train, twin, fwd, ev):
        return {"model": model, "median_s": {("binary", "train"): train, ("float", "train"): twin,
                                             ("binary", "train_fwd"): fwd, ("binary", "eval"): ev}}

    assert missed_targets(result("resnet20_1w1a", 1.0, 1.0, 2.0, 1.0)) == {}
    assert set(missed_targets(result("resnet20_1w1a", 1.05, 1.0, 2.0, 1.0))) == {"train"}  # ResNet-20: 1.0x
    assert missed_targets(result("resnet18_1w1a", 1.05, 1.0, 2.0, 1.0)) == {}  # the others: 1.1x
    missed = missed_targets(result("vgg_small_1w1a", 1.2, 1.0, 1.5, 1.0))
    assert set(missed) == {"train", "eval"} and "1.200x" in missed["train"] and "1.500x" in missed["eval"]
    assert "1.004x" in missed_targets(result("resnet20_1w1a", 1.004, 1.0, 2.0, 1.0))["train"]  # not "1.00x": a miss
    args = ["--models", "resnet20_1w1a", "--methods", "siman", "--batch", "4", "--rounds", "1", "--warmup", "0",
            "--matmul_size", "256"]
    assert bench_main(args + ["--profile"]) == 0
    out = capsys.readouterr().out
    for part in ("training step", "training-mode forward", "eval forward"):
        assert f"resnet20_1w1a siman: {part}, top 15 operators" in out
    assert "bnnkit::bconv" in out and "bnnkit::act_forward" in out  # native kernels are named, not hidden
    assert "binary conv kernel, 512->512 channels 3x3 at 8x8 (compute-bound):" in out
    bound = next(line for line in out.splitlines() if line.startswith("   binary convs:"))
    assert "XOR-popcount words need" in bound and bound.endswith("faster than the training forward")
    assert bench_main(args + ["--profile", "never"]) == 0
    assert "top 15 operators" not in capsys.readouterr().out


def test_conv_bound_puts_every_binary_conv_at_the_kernels_peak():
    from bnnkit.analysis.bench import conv_bound

    figures = {"train_fwd": {"total_s": 0.30, "bconv_s": 0.10, "words": 10 ** 9},
               "eval": {"total_s": 0.15, "bconv_s": 0.12, "words": 10 ** 9}}
    line = conv_bound(figures, rate=2e10)  # 50 ms each at the peak: (300 - 100 + 50) / (150 - 120 + 50)
    assert "100 of the training forward's 300 ms, 120 of eval's 150 ms" in line
    assert "1000 M XOR-popcount words need 50 ms" in line and "would be 3.12x faster" in line
    figures["train_fwd"]["words"] = figures["eval"]["words"] = 0
    assert "no packed binary convs" in conv_bound(figures, rate=2e10)


_WHERE_A_LARGE_TENSOR_LIVES = """
import torch
from bnnkit import _allocator
_allocator.tune()
x = torch.empty(16 << 20).fill_(1.0)  # 64 MB: ResNet-18's CIFAR activations at batch 256
address = x.data_ptr()
for line in open("/proc/self/maps"):
    fields = line.split()
    low, high = (int(end, 16) for end in fields[0].split("-"))
    if low <= address < high:
        print(fields[5] if len(fields) > 5 else "anonymous")
"""


def test_tuned_allocator_serves_tensors_above_glibcs_mmap_ceiling_from_the_heap():
    """A 64 MB tensor (a training step's activations): tuned, glibc carves it from the heap, where
    a freed block stays for the next step's; untuned, it is a mapping of its own, returned to the
    kernel when freed and zeroed afresh page by page when mapped again. (Whether the heap's free
    blocks fit the next allocation depends on what else lies there: ResNet-18 training steps at
    batch 256, measured, 3.6 s tuned against 6.5 s untuned; scratch script in the throughput docs.)"""
    import os
    import platform
    import subprocess
    import sys

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        pytest.fail("the allocator tuning is for glibc on Linux")

    def mapping(tune: str) -> str:
        env = {**os.environ, "BNNKIT_MALLOC_TUNE": tune}
        run = subprocess.run([sys.executable, "-c", _WHERE_A_LARGE_TENSOR_LIVES], env=env, capture_output=True,
                             text=True, timeout=300, check=True)
        return run.stdout.strip()

    assert mapping("1") == "[heap]"
    assert mapping("0") == "anonymous"


def test_allocator_tuning_applies_on_glibc_and_can_be_turned_off(monkeypatch):
    import platform

    from bnnkit import _allocator
    expected = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
    assert _allocator.tune() is expected
    monkeypatch.setenv("BNNKIT_MALLOC_TUNE", "0")
    assert _allocator.tune() is False


def test_allocator_benchmark_compares_a_tuned_and_an_untuned_process():
    import subprocess
    import sys

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "allocator.py"
    run = subprocess.run([sys.executable, str(script), "--model", "resnet20_1w1a", "--batch", "8", "--steps", "9"],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[0] == "resnet20_1w1a siman batch 8, 9 steps a run, medians after the first step"
    assert lines[1].lstrip().startswith("tuned ") and lines[2].lstrip().startswith("untuned ")
    assert "untuned / tuned step time:" in lines[3]
    bad = subprocess.run([sys.executable, str(script), "--steps", "2"], capture_output=True, text=True, timeout=600)
    assert bad.returncode != 0 and "--steps must be at least 3" in bad.stderr


def test_bench_times_an_epochs_first_step_apart_from_the_step(capsys):
    """RBNN fits its rotations in an epoch's first training batch: the bench's step leaves that out
    (t ratio) and times the epoch's first step, with the update, on its own line."""
    import bnnkit.analysis.bench as bench

    torch.manual_seed(0)
    model = bnnkit.create_model("resnet20_1w1a", method="rbnn")
    steps = bench.make_steps(model, torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,)), True)
    conv = next(m for m in model.modules() if hasattr(m, "weight_quantizer"))
    r1 = conv.weight_quantizer.R1.clone()
    steps["train"]()
    assert torch.equal(conv.weight_quantizer.R1, r1)
    steps["epoch_first"]()
    assert not torch.equal(conv.weight_quantizer.R1, r1) and conv.weight_quantizer.epoch == -1
    assert bench_main(["--models", "resnet20_1w1a", "--methods", "rbnn", "--batch", "4", "--rounds", "1",
                       "--warmup", "0", "--matmul_size", "256", "--profile", "never"]) == 0
    assert "ms once per epoch" in capsys.readouterr().out
