"""libbnn against PyTorch float32 eager, for issue #25's targets (ImageNet resnet18_1w1a, batch 1):

- end to end: libbnn (in process, through ctypes, and `bnnrun --bench` as a separate program)
  against the same network with float convs (bnnkit.deploy._bench.float_twin), NCHW input,
  timed in alternating turns so that load on a shared machine slows both;
- each binary conv: libbnn's profiled time for the node (packing, XOR-popcount, epilogue) against
  F.conv2d of the same shape, and its XOR-popcount words a second against the kernel's peak that
  `bnnkit bench` measures (bnnkit.analysis.bench.binary_conv_rate);
- the float stem's share of libbnn's time, and the static bnnrun's size when it is built.

    OMP_NUM_THREADS=1 python scripts/bench_libbnn.py [--method biper] [--threads 1] [--min-time 2]

It prints figures; it asserts nothing (the machine's load decides timings, ratios are what compare).
Needs `make runtime` (and `make runtime-static` for the size).
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import bnnkit  # noqa: E402
from bnnkit import deploy  # noqa: E402
from bnnkit.analysis.bench import binary_conv_rate  # noqa: E402
from bnnkit.deploy._bench import float_twin, timeit, timeit_interleaved  # noqa: E402
from bnnkit.methods import get_method  # noqa: E402


def bnnrun_median_ms(path: str, threads: int, rounds: int) -> float:
    out = subprocess.run([str(ROOT / "build/runtime/bnnrun"), "--bench", path, "--threads", str(threads),
                          "--rounds", str(rounds)], capture_output=True, text=True, check=True, env={"PATH": "/usr/bin:/bin"}).stdout
    return float(re.search(r"end-to-end: median ([0-9.]+) ms", out).group(1))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--method", default="siman")
    p.add_argument("--model", default="resnet18_1w1a")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--min-time", type=float, default=2.0, help="seconds of repeats a side, end to end")
    p.add_argument("--profile-runs", type=int, default=20)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    model = bnnkit.create_model(a.model, method=a.method, dataset="imagenet",
                                **get_method(a.method).export_settings).eval()
    shape = (1, 3, 224, 224)
    tmp = tempfile.mkdtemp()
    path = os.path.join(tmp, "model.bnn")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        deploy.export(model, path, example_input_shape=shape)
    python_runtime = deploy.load(path)
    shapes: dict[str, tuple] = {}
    python_runtime.run(torch.randn(*shape), shapes=shapes)
    lib = deploy.load(path, engine="libbnn", threads=a.threads)
    twin = float_twin(model)
    x = torch.randn(*shape)

    def float_net():
        with torch.inference_mode():
            return twin(x)
    tf, tl, tp = timeit_interleaved([float_net, lambda: lib(x), lambda: python_runtime(x)], a.min_time * 3, rounds=6)
    tr = bnnrun_median_ms(path, a.threads, 20)
    print(f"# {a.method} {a.model}, batch 1, {a.threads} thread(s), isa {lib.isa}, {os.cpu_count()} cores, "
          f"torch {torch.__version__}; times: min over repeats in alternating turns")
    print("\n| float32 eager (ms) | libbnn (ms) | speed-up | Python runtime (ms) | speed-up | bnnrun --bench median (ms) |")
    print("|---:|---:|---:|---:|---:|---:|")
    print(f"| {tf * 1e3:.2f} | {tl * 1e3:.2f} | {tf / tl:.1f}x | {tp * 1e3:.2f} | {tf / tp:.1f}x | {tr:.2f} |")

    lib.profile(True)
    for _ in range(a.profile_runs):
        lib(x)
    layers = lib.layers()
    lib.profile(False)
    total = sum(s for _, _, s in layers)
    stem = sum(s for _, op, s in layers if op == "conv")
    print(f"\nprofiled: {total / a.profile_runs * 1e3:.2f} ms a run; real convs (the stem, downsample convs): "
          f"{stem / total * 100:.1f} %")
    peak = binary_conv_rate(a.threads)
    print(f"\nXOR-popcount peak of the kernel (bnnkit bench's): {peak / 1e9:.2f} G words/s\n")
    print("| layer | input | out | k/s | float32 conv (ms) | libbnn node (ms) | speed-up | G words/s | of peak |")
    print("|---|---|---:|---|---:|---:|---:|---:|---:|")
    for name, op, seconds in layers:
        if op != "bconv" or name not in python_runtime.kernels:
            continue
        conv, (pad, center, groups) = python_runtime.kernels[name]
        _, C, H, W = shapes[name]
        w = torch.randn(conv.out_channels, C // groups, *conv.kernel)
        xi = torch.randn(1, C, H, W)

        def float_conv():
            with torch.inference_mode():
                return F.conv2d(xi, w, None, conv.stride, conv.padding, conv.dilation, groups)
        tfc = timeit(float_conv, 0.3)
        tn = seconds / a.profile_runs
        (kh, kw), (sh, sw) = conv.kernel, conv.stride
        Ho = (H + 2 * conv.padding[0] - kh) // sh + 1
        Wo = (W + 2 * conv.padding[1] - kw) // sw + 1
        words = Ho * Wo * conv.out_channels * kh * kw * ((C // groups + 63) // 64)
        print(f"| {name} | {C}x{H}x{W} | {conv.out_channels} | {kh}x{kw}/{sh} | {tfc * 1e3:.3f} | {tn * 1e3:.3f} | "
              f"{tfc / tn:.1f}x | {words / tn / 1e9:.2f} | {words / tn / peak * 100:.0f} % |")
    static = ROOT / "build/runtime-static/bnnrun"
    if static.exists():
        print(f"\nstatic bnnrun: {static.stat().st_size / 1e6:.2f} MB ({static.stat().st_size} bytes)")
    else:
        print("\nstatic bnnrun: not built (make runtime-static)")


if __name__ == "__main__":
    t0 = time.time()
    main()
    print(f"\n({time.time() - t0:.0f} s)")
