"""Training and evaluation throughput of binary models against the float network of the same
topology, measured interleaved in one run (`bnnkit bench`, benchmarks/train_step.py).

The float twin replaces every BinaryConv2d with a plain nn.Conv2d of the same shape and keeps
everything else (activations, shortcuts, batch norm), so the ratio isolates what binarization
costs. Figures are medians over rounds; GFLOP/s counts 2 FLOPs a multiply-accumulate and a
training step as 3 forward passes' worth of convolution work, against a 4096x4096 float32 matmul
timed in the same run.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import statistics
import time
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .. import _allocator
from .._command import ArgumentParser, number
from ..methods import configure, method_of
from ..nn.layers import BinaryConv2d
from .summary import summarize

# the models every seed method published, per input family; methods add their own (Method.bench_models)
DEFAULT_MODELS = {"cifar": ("resnet20_1w1a", "resnet18_1w1a", "vgg_small_1w1a"), "imagenet": ("resnet18_1w1a",)}
DATASETS = ("cifar10", "imagenet")
DEFAULT_BATCH = {"cifar": 256, "imagenet": 32}


def bench_input(dataset: str, batch: int, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """A random batch at the dataset's resolution (32x32 for CIFAR, 224x224 for ImageNet) with labels."""
    from ..models import DEFAULT_CLASSES, FAMILIES

    side = 32 if FAMILIES[dataset] == "cifar" else 224
    return (torch.randn(batch, 3, side, side, device=device),
            torch.randint(0, DEFAULT_CLASSES[dataset], (batch,), device=device))


def bench_cases() -> dict[str, tuple[str, dict]]:
    """Every registered method's bench cases (Method.bench_cases), label -> (method, settings), in
    the order the methods were published."""
    from ..methods import get_method, list_methods

    classes = sorted((get_method(n) for n in list_methods()), key=lambda c: (c.year, c.name))
    return {label: (c.name, dict(settings)) for c in classes for label, settings in c.bench_cases.items()}


def default_models(family: str) -> tuple[str, ...]:
    """The models `bnnkit bench` times without --models: the seed methods' published ones, then
    those the registered methods declare for this family."""
    from ..methods import get_method, list_methods

    declared = (m for n in list_methods() for m in get_method(n).bench_models.get(family, ()))
    return tuple(dict.fromkeys([*DEFAULT_MODELS[family], *declared]))


def case_label(method: str, settings: dict) -> str:
    """The row's name: the method, and the settings that tell its cases apart ('biper s2')."""
    from ..methods import get_method

    cases = get_method(method).bench_cases
    differ = sorted({k for s in cases.values() for k in s if any(s.get(k) != t.get(k) for t in cases.values())})
    return method + "".join(f" {k[0]}{settings[k]}" for k in differ if k in settings)


def float_twin(model: nn.Module) -> nn.Module:
    """The same network with every binary conv replaced by a float nn.Conv2d of the same shape."""
    twin = copy.deepcopy(model)
    for name, module in list(twin.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, BinaryConv2d):
                conv = nn.Conv2d(child.in_channels, child.out_channels, child.kernel_size, child.stride,
                                 child.padding, child.dilation, child.groups, bias=False)
                with torch.no_grad():
                    conv.weight.copy_(child.weight)
                setattr(module, child_name, conv)
    return twin


def matmul_gflops(n: int = 4096, repeats: int = 3) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t)
    return 2 * n**3 / min(times) / 1e9


def binary_conv_rate(threads: int, repeats: int = 5) -> float | None:
    """XOR-popcount words a second of the native binary conv kernel on a compute-bound layer
    (512 -> 512 channels, 3x3, 8x8, batch 16: long dot products, few outputs): the kernel's
    practical peak, as the matmul is float32's. None where the native kernels are not built."""
    from ..native import kernels as _native

    if _native.try_lib() is None:
        return None
    gen = torch.Generator().manual_seed(0)
    C, N, H = 512, 16, 8
    w_bits = torch.randint(-2 ** 62, 2 ** 62, (C, 9, _native.words(C)), dtype=torch.int64, generator=gen)
    conv = _native.PackedConv(w_bits, torch.rand(C, generator=gen), torch.rand(C, generator=gen), in_channels=C,
                              kernel=(3, 3), stride=(1, 1), padding=(1, 1), dilation=(1, 1), groups=1)
    isa = _native.resolve_isa()
    packed, _, ties = _native.pack(torch.randn(N, C, H, H, generator=gen), groups=1, pad=(1, 1), center=False,
                                   isa=isa, threads=threads)
    best = float("inf")
    for _ in range(repeats + 1):  # the first call warms the caches
        with _native.count_words() as words:
            t = time.perf_counter()
            conv(packed, H, H, (1, 1), isa=isa, threads=threads, ties=ties)
            best = min(best, time.perf_counter() - t)
    return words[0] / best


def _timed(fn: Callable[[], None], device: torch.device | None = None) -> float:
    sync = torch.cuda.synchronize if device is not None and device.type == "cuda" else (lambda: None)
    sync()
    t = time.perf_counter()
    fn()
    sync()  # CUDA runs asynchronously: time the work, not its launch
    return time.perf_counter() - t


def make_steps(model: nn.Module, x: torch.Tensor, y: torch.Tensor, binary: bool, amp: str | None = None):
    """Closures for one training step, one training-mode forward and one eval forward."""
    autocast = (lambda: torch.autocast(x.device.type, dtype=torch.bfloat16)) if amp == "bf16" else contextlib.nullcontext
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3, momentum=0.9)
    method = method_of(model) if binary else None

    def train_step() -> None:
        model.train()
        with autocast():
            loss = F.cross_entropy(model(x), y)
            if method is not None:
                loss = loss + method.regularizer(model)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def train_forward() -> None:
        model.train()
        with autocast():
            model(x)

    def evaluate() -> None:
        model.eval()
        with torch.no_grad(), autocast():
            model(x)

    # The first eval forward after a step also rebuilds the packed weights (bnnkit._packed_eval);
    # an evaluation pass over a test set pays that once, so the next batch's time is the throughput.
    steps = {"train": train_step, "train_fwd": train_forward, "eval_first": evaluate, "eval": evaluate}
    if method is not None:
        hparams = {o.name: o.default for o in type(method).options if o.hparam and o.default is not None}

        def epoch_first_step() -> None:
            # an epoch's first step after the trainer applies the schedule: it also does what the
            # method does once per epoch (RBNN's rotation update), which `train` leaves out
            configure(model, **method.schedule(0, 100, **hparams))
            train_step()

        steps["epoch_first"] = epoch_first_step
    return steps


def bench_case(name: str, method: str, settings: dict, batch: int, rounds: int, warmup: int,
               channels_last: bool = False, amp: str | None = None, device: str = "cpu",
               dataset: str = "cifar10") -> dict:
    from .. import create_model

    torch.manual_seed(0)
    dev = torch.device(device)
    binary = create_model(name, method, dataset=dataset, **settings)
    fp = float_twin(binary)
    binary, fp = binary.to(dev), fp.to(dev)
    x, y = bench_input(dataset, batch, dev)
    if channels_last:
        binary, fp, x = binary.to(memory_format=torch.channels_last), fp.to(memory_format=torch.channels_last), \
            x.contiguous(memory_format=torch.channels_last)
    steps = {"binary": make_steps(binary, x, y, True, amp), "float": make_steps(fp, x, y, False, amp)}
    for _ in range(warmup):
        for kind in steps.values():
            for fn in kind.values():
                fn()
    times: dict[tuple[str, str], list[float]] = {}
    for _ in range(rounds):  # interleaved, so that machine noise hits both alike
        for net, kind in steps.items():
            for what, fn in kind.items():
                times.setdefault((net, what), []).append(_timed(fn, dev))
    med = {k: statistics.median(v) for k, v in times.items()}
    macs = summarize(binary).binary_macs + summarize(binary).real_macs
    return {"model": name, "method": case_label(method, settings), "dataset": dataset,
            "batch": batch, "median_s": med, "macs_per_image": macs}


def format_row(r: dict, peak: float) -> str:
    m, b = r["median_s"], r["batch"]
    train_b, train_f = b / m[("binary", "train")], b / m[("float", "train")]
    ratio = m[("binary", "train")] / m[("float", "train")]
    eval_b = b / m[("binary", "eval")]
    eval_speedup = m[("binary", "train_fwd")] / m[("binary", "eval")]
    first_speedup = m[("binary", "train_fwd")] / m[("binary", "eval_first")]
    gflops = 3 * 2 * r["macs_per_image"] * train_b / 1e9
    return (f"{r['model']:<16} {r['method']:<9} {b:>5} {train_b:>9.1f} {train_f:>9.1f} {ratio:>7.2f}x "
            f"{eval_b:>9.1f} {b / m[('float', 'eval')]:>9.1f} {eval_speedup:>7.2f}x {first_speedup:>7.2f}x "
            f"{gflops:>7.1f} {100 * gflops / peak:>5.1f}%")


HEADER = (f"{'model':<16} {'method':<9} {'batch':>5} {'train/s':>9} {'float/s':>9} {'t ratio':>8} "
          f"{'eval/s':>9} {'feval/s':>9} {'ev gain':>8} {'1st gain':>8} {'GFLOP/s':>7} {'peak':>6}")


def missed_targets(r: dict) -> dict[str, str]:
    """The targets this result misses, as {"train" | "eval": what was measured}: the training step
    at most 1.0x the float twin's time (ResNet-20) or 1.1x (the others), eval at least 2x faster
    than the training-mode forward."""
    m = r["median_s"]
    limit = 1.0 if r["model"].startswith("resnet20") else 1.1
    ratio = m[("binary", "train")] / m[("float", "train")]
    gain = m[("binary", "train_fwd")] / m[("binary", "eval")]
    missed = {}
    if ratio > limit:
        missed["train"] = f"training step {ratio:.3f}x the float twin's (target <= {limit}x)"  # 3 places: 1.004x must not print as 1.00x
    if gain < 2.0:
        missed["eval"] = f"eval {gain:.3f}x faster than the training forward (target >= 2x)"
    return missed


def profile_case(name: str, method: str, settings: dict, batch: int, top: int = 15,
                 parts: tuple[str, ...] = ("train",), channels_last: bool = False,
                 amp: str | None = None, dataset: str = "cifar10") -> tuple[str, dict[str, dict[str, float]]]:
    """torch.profiler's top operators (self CPU time) of one training step ("train"), one
    training-mode forward ("train_fwd") and/or one eval forward after a step ("eval"), in the
    bench's configuration, the native kernels named bnnkit::<kernel>; and per part {"total_s",
    "bconv_s", "words"}: the part's profiled self CPU time, that of the binary conv kernel
    (bnnkit::bconv and bnnkit::taps, which lays out narrow layers' taps), and the XOR-popcount
    words those convs ran."""
    from .. import create_model
    from ..native import kernels as _native

    torch.manual_seed(0)
    model = create_model(name, method, dataset=dataset, **settings)
    x, y = bench_input(dataset, batch)
    if channels_last:
        model, x = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    steps = make_steps(model, x, y, True, amp)
    titles = {"train": "training step", "train_fwd": "training-mode forward", "eval": "eval forward"}
    out, figures = [], {}
    for part in parts:
        steps["train"]()
        if part == "eval":
            steps["eval"]()  # the first eval after a step re-packs the weights: time the next one
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof, \
                _native.count_words() as words:
            steps[part]()
        stats = prof.key_averages()
        figures[part] = {"total_s": sum(e.self_cpu_time_total for e in stats) / 1e6,
                         "bconv_s": sum(e.self_cpu_time_total for e in stats
                                        if e.key in ("bnnkit::bconv", "bnnkit::taps")) / 1e6,
                         "words": words[0]}
        out.append(f"-- {name} {method}: {titles[part]}, top {top} operators by self CPU time\n"
                   + stats.table(sort_by="self_cpu_time_total", row_limit=top))
    return "\n".join(out), figures


def conv_bound(figures: dict[str, dict[str, float]], rate: float) -> str:
    """What the eval gain would be if every binary conv ran at the kernel's rate on a
    compute-bound layer (binary_conv_rate), everything else as profiled: whether faster
    binary convs alone could reach the 2x."""
    fwd, ev = figures["train_fwd"], figures["eval"]
    if not ev["words"]:
        return ("   no packed binary convs (real-valued weights): eval runs the same float convs as the "
                "training forward")
    need_f, need_e = fwd["words"] / rate, ev["words"] / rate
    best = (fwd["total_s"] - fwd["bconv_s"] + need_f) / (ev["total_s"] - ev["bconv_s"] + need_e)
    return (f"   binary convs: {1e3 * fwd['bconv_s']:.0f} of the training forward's {1e3 * fwd['total_s']:.0f} ms, "
            f"{1e3 * ev['bconv_s']:.0f} of eval's {1e3 * ev['total_s']:.0f} ms (profiled); their "
            f"{ev['words'] / 1e6:.0f} M XOR-popcount words need {1e3 * need_e:.0f} ms at the kernel's peak above, "
            f"so with every binary conv at that peak eval would be {best:.2f}x faster than the training forward")


def main(argv: list[str] | None = None) -> int:
    _allocator.tune()  # as the bnnkit command does, also for benchmarks/train_step.py
    parser = ArgumentParser(prog="bnnkit bench", description=__doc__.split("\n\n")[0])
    cases_by_label = bench_cases()
    method_names = list(dict.fromkeys(m for m, _ in cases_by_label.values()))
    parser.add_argument("--dataset", choices=DATASETS, default="cifar10",
                        help="input resolution and classes: cifar10 (32x32, 10) or imagenet (224x224, 1000), "
                             "which also picks the ImageNet variant of a name both have (resnet18_1w1a)")
    parser.add_argument("--models", nargs="*", default=None,
                        help="model names (default: " + "; ".join(f"{f}: {' '.join(default_models(f))}"
                                                                  for f in DEFAULT_MODELS) + ")")
    parser.add_argument("--methods", nargs="*", default=None, choices=list(dict.fromkeys([*method_names, *cases_by_label])),
                        help="methods (every case of each) or single cases (e.g. biper2: BiPer's stage 2); default: all")
    parser.add_argument("--batch", type=number(int, 1), default=None,
                        help=f"images a step (default: {DEFAULT_BATCH['cifar']} for CIFAR, {DEFAULT_BATCH['imagenet']} for ImageNet)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (on CUDA the native CPU kernels are not used)")
    parser.add_argument("--rounds", type=number(int, 1), default=5)
    parser.add_argument("--warmup", type=number(int, 0), default=2)
    parser.add_argument("--channels_last", action="store_true")
    parser.add_argument("--matmul_size", type=number(int, 1), default=4096, help="side of the float32 matmul that measures the peak")
    parser.add_argument("--amp", choices=["bf16"], default=None,
                        help="bf16 autocast for binary and float alike (never a faithful recipe's default)")
    parser.add_argument("--kernels", choices=["native", "eager", "compiled"], default="native",
                        help="implementation of the fused activation paths (bnnkit.functional.set_kernels); "
                             "the float twin has none")
    parser.add_argument("--compile", action="store_true", help="the same as --kernels compiled")
    parser.add_argument("--profile", nargs="?", const="always", default="misses", choices=["always", "misses", "never"],
                        help="print torch.profiler's top operators (native kernels as bnnkit::<kernel>) of the "
                             "parts of a case that miss a target (default: misses), of every case (--profile), "
                             "or never")
    settings_flags = bench_setting_flags(parser)
    args = parser.parse_args(argv)
    for flag in settings_flags.values():
        flag.check(parser, getattr(args, flag.name))
    if args.device not in ("cpu", "cuda") or (args.device == "cuda" and not torch.cuda.is_available()):
        parser.error(f"--device {args.device!r}: choose cpu, or cuda on a machine with a GPU")
    from ..nn.functional import kernels_in_use, set_kernels

    wanted = "compiled" if args.compile else args.kernels
    if set_kernels(wanted) != wanted:
        print(f"torch.compile is unavailable here; measuring the {kernels_in_use()} kernels")
    from ..models import FAMILIES, list_models

    family = FAMILIES[args.dataset]
    known = list_models(family)
    if args.models is not None and set(args.models) - set(known):
        parser.error(f"no {args.dataset} model {', '.join(sorted(set(args.models) - set(known)))}; "
                     f"--models takes {', '.join(known)} with --dataset {args.dataset}")
    if args.batch is None:
        args.batch = DEFAULT_BATCH[family]
    picked = [label for label, (m, _) in cases_by_label.items()
              if args.methods is None or label in args.methods or m in args.methods]
    cases = [(n, *cases_by_label[label]) for n in (args.models or default_models(family)) for label in picked]
    cases = [(n, m, s) for n, m, s in cases if builds(n, m, args.dataset)]
    if not cases:
        parser.error(f"none of the picked methods builds {' '.join(args.models or default_models(family))}; "
                     "pick a method whose architecture the model is published in (bnnkit summary --help lists them)")
    print(f"{args.dataset} input, torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}, "
          f"{args.rounds} rounds after {args.warmup} warm-up, channels_last={args.channels_last}, "
          f"activation kernels={kernels_in_use()}, amp={args.amp or 'off (float32)'}"
          + "".join(f", {f.owner} {f.name}={getattr(args, f.name):g}" for f in settings_flags.values()))
    peak = matmul_gflops(args.matmul_size)
    print(f"float32 {args.matmul_size}x{args.matmul_size} matmul: {peak:.1f} GFLOP/s")
    rate = binary_conv_rate(torch.get_num_threads())
    if rate is not None:
        print(f"binary conv kernel, 512->512 channels 3x3 at 8x8 (compute-bound): {rate / 1e9:.2f} G XOR-popcount "
              f"words/s ({2 * 64 * rate / 1e9:.0f} G binary OPs/s)")
    print(HEADER, flush=True)
    for name, method, settings in cases:
        settings = {**settings, **{f.name: getattr(args, f.name) for f in settings_flags.values()
                                   if f.method == method and getattr(args, f.name) != f.default}}
        r = bench_case(name, method, settings, args.batch, args.rounds, args.warmup, args.channels_last, args.amp,
                       args.device, args.dataset)
        print(format_row(r, peak), flush=True)
        if ("binary", "epoch_first") in r.get("median_s", {}):
            first, step = r["median_s"][("binary", "epoch_first")], r["median_s"][("binary", "train")]
            print(f"   an epoch's first step {1e3 * first:.1f} ms, the step {1e3 * step:.1f} ms: "
                  f"{1e3 * (first - step):+.1f} ms once per epoch (the method's per-epoch work, outside t ratio)",
                  flush=True)
        missed = missed_targets(r)
        if args.profile == "always" or (args.profile == "misses" and missed):
            for line in missed.values():
                print(f"   target missed: {line}")
            parts = ("train", "train_fwd", "eval")
            if args.profile == "misses":  # the step's operators, or the two forwards the eval gain compares
                parts = (("train",) if "train" in missed else ()) + (("train_fwd", "eval") if "eval" in missed else ())
            text, figures = profile_case(name, method, settings, args.batch, parts=parts,
                                         channels_last=args.channels_last, amp=args.amp, dataset=args.dataset)
            print(text, flush=True)
            if rate is not None and "train_fwd" in figures:
                print(conv_bound(figures, rate), flush=True)
    print("t ratio = binary train-step time / float train-step time (target <= 1.0 for resnet20, 1.1 others);"
          " ev gain = binary train-mode forward time / eval time (target >= 2), eval timed on the second batch"
          " after a step; 1st gain = the same for the first batch, which also rebuilds the packed weights"
          " (once per evaluation pass)")
    return 0


class SettingFlag:
    """A method setting that `bnnkit bench` takes as a flag, applied to that method's cases
    (SiMaN's --percent: its recipe schedules 15*(1 - e/E), so above 0 in every epoch)."""

    def __init__(self, method: str, owner: str, name: str, default: float, low: float, high: float, text: str) -> None:
        self.method, self.owner, self.name, self.default, self.low, self.high, self.text = \
            method, owner, name, default, low, high, text

    def check(self, parser: argparse.ArgumentParser, value: float) -> None:
        if not self.low <= value < self.high:
            parser.error(f"--{self.name} must lie in [{self.low:g}, {self.high:g}), not {value}")


def bench_setting_flags(parser: argparse.ArgumentParser) -> dict[str, SettingFlag]:
    """Flags for the numeric settings methods declare for benchmarking (Method.bench_settings)."""
    from ..methods import get_method, list_methods

    flags = {}
    for name in list_methods():
        cls = get_method(name)
        for key, (low, high, text) in cls.bench_settings.items():
            flag = SettingFlag(name, cls.display(), key, float(cls.defaults[key]), low, high, text)
            parser.add_argument(f"--{key}", type=float, default=flag.default,
                                help=f"{cls.display()}: {text} (default {flag.default:g})")
            flags[key] = flag
    return flags


def builds(model: str, method: str, dataset: str | None = None) -> bool:
    """Whether the model is published in the variant this method builds (bnnkit.models)."""
    from ..methods import get_method
    from ..models import model_entry

    return get_method(method).architecture in model_entry(model, dataset).architectures
