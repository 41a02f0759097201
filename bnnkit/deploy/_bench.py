"""Benchmark of the packed runtime against PyTorch float32 eager for the same network.

The float32 baseline is the model itself with every binary conv replaced by a plain nn.Conv2d of
the same shape (real weights, no binarization), run eagerly under torch.inference_mode() on
the same input as the runtime; everything else in the network is unchanged. Per layer, each binary conv
(binarize + pack its input, then the XOR-popcount conv with its alpha and BN epilogue) is
compared with F.conv2d of the same shape on the same (NCHW) input. Times are the minimum over repeats
(at least 3, for at least `min_time` seconds), which is robust to other load on the machine; the
two networks, and the two convs of a layer, are timed in alternating turns, so that a burst of
load cannot fall on only one of them.
"""
from __future__ import annotations

import copy
import json
import os
import platform
import tempfile
import time
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..native import kernels as _native
from ._export import export, is_binary_conv
from ._runtime import load


def float_twin(model: nn.Module) -> nn.Module:
    """A copy of `model` whose binary convs are plain float nn.Conv2d of the same shape."""
    twin = copy.deepcopy(model)
    for module in list(twin.modules()):
        for name, child in list(module.named_children()):
            if is_binary_conv(child):
                conv = nn.Conv2d(child.in_channels, child.out_channels, child.kernel_size, child.stride, child.padding,
                                 child.dilation, child.groups, bias=False)
                with torch.no_grad():
                    conv.weight.copy_(child.weight)
                setattr(module, name, conv)
    return twin.eval()


def timeit(fn: Callable[[], Any], min_time: float, min_runs: int = 3) -> float:
    """Minimum seconds per call over repeats (after one warm-up call)."""
    fn()
    best, total, runs = float("inf"), 0.0, 0
    while runs < min_runs or total < min_time:
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        best, total, runs = min(best, dt), total + dt, runs + 1
    return best


def timeit_interleaved(fns: list[Callable[[], Any]], min_time: float, rounds: int = 5) -> list[float]:
    """timeit() of each function, in `rounds` alternating turns of min_time / rounds each: a burst
    of load on a shared machine then slows one turn of each, not all of one function's runs."""
    best = [float("inf")] * len(fns)
    for _ in range(rounds):
        for i, fn in enumerate(fns):
            best[i] = min(best[i], timeit(fn, min_time / rounds))
    return best


LAYOUTS = {"nchw": torch.contiguous_format, "channels_last": torch.channels_last}


def run_bench(model: nn.Module, *, threads: list[int], batches: list[int], layers: bool = True, min_time: float = 0.5,
              isa: str | None = None, json_path: str | None = None, layouts: tuple[str, ...] = ("nchw",),
              out=print) -> dict[str, Any]:
    """Both networks get the same input in each layout of `layouts`. The runtime reproduces the
    model's rounding, which follows the input's layout: an NCHW input costs SiMaN a reorder of each
    binary conv's input for its exact mean, a channels-last one nothing."""
    spec = getattr(model, "bnnkit_spec", {})
    family = spec.get("family", "imagenet")
    shape = (1, 3, 224, 224) if family == "imagenet" else (1, 3, 32, 32)
    model = model.eval()
    isa = _native.resolve_isa(isa)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.bnn")
        export(model, path, example_input_shape=shape)
        runtime = load(path, isa=isa)
    twin = float_twin(model)
    shapes: dict[str, tuple] = {}
    runtime.run(torch.randn(*shape), shapes=shapes)
    old_threads = torch.get_num_threads()
    name = f"{spec.get('method', '?')} {spec.get('model', type(model).__name__)} ({spec.get('dataset', '?')})"
    out(f"# bnnkit deploy benchmark: {name}; isa {isa}; {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores; torch {torch.__version__}; times = min over repeats")
    results: dict[str, Any] = {"model": name, "isa": isa, "end_to_end": [], "layers": []}
    try:
        out("\n## End to end (ms)\n")
        out("| threads | batch | input layout | float32 eager | packed runtime | speed-up |")
        out("|---:|---:|---|---:|---:|---:|")
        for th in threads:
            torch.set_num_threads(th)
            runtime.threads = th
            for bs in batches:
                for layout in layouts:
                    x = torch.randn(bs, *shape[1:]).contiguous(memory_format=LAYOUTS[layout])

                    def float_net():
                        with torch.inference_mode():
                            return twin(x)
                    tf, tb = timeit_interleaved([float_net, lambda: runtime(x)], min_time)
                    results["end_to_end"].append({"threads": th, "batch": bs, "layout": layout, "float_ms": tf * 1e3,
                                                  "packed_ms": tb * 1e3})
                    out(f"| {th} | {bs} | {layout} | {tf * 1e3:.2f} | {tb * 1e3:.2f} | {tf / tb:.1f}x |")
        if layers:
            for th in threads:
                torch.set_num_threads(th)
                for bs in batches:
                    out(f"\n## Binary convolutions, {th} thread(s), batch {bs} (ms; packed = binarize+pack+conv; "
                        "channels-last input, SiMaN's mean included)\n")
                    out("| layer | input | out | k/s | float32 conv | packed | speed-up |")
                    out("|---|---|---:|---|---:|---:|---:|")
                    for lname, (conv, (pad, center, groups)) in runtime.kernels.items():
                        _, C, H, W = shapes[lname]
                        x = torch.randn(bs, C, H, W)
                        w = torch.randn(conv.out_channels, C // groups, *conv.kernel)
                        xl = x.contiguous(memory_format=torch.channels_last)
                        def float_conv():
                            with torch.inference_mode():
                                return F.conv2d(x, w, None, conv.stride, conv.padding, conv.dilation, groups)

                        def packed():  # as the runtime does
                            bits, _, ties = _native.pack(xl, groups=groups, pad=tuple(pad), center=center, isa=isa,
                                                         threads=th, torch_mean=True, return_thresholds=False)
                            return conv(bits, H, W, tuple(pad), isa=isa, threads=th, ties=ties)
                        tf, tb = timeit_interleaved([float_conv, packed], min_time / 4)
                        row = {"layer": lname, "threads": th, "batch": bs, "input": [C, H, W], "out": conv.out_channels,
                               "kernel": list(conv.kernel), "stride": list(conv.stride), "float_ms": tf * 1e3,
                               "packed_ms": tb * 1e3}
                        results["layers"].append(row)
                        out(f"| {lname} | {C}x{H}x{W} | {conv.out_channels} | {conv.kernel[0]}x{conv.kernel[1]}/{conv.stride[0]} "
                            f"| {tf * 1e3:.3f} | {tb * 1e3:.3f} | {tf / tb:.1f}x |")
    finally:
        torch.set_num_threads(old_threads)
    if json_path:
        with open(json_path, "w") as f:
            json.dump(results, f, indent=1)
    return results
