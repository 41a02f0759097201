"""Training-step time and resident memory with and without the allocator tuning (bnnkit/_allocator.py).

mallopt settings hold for a whole process, so each setting runs in a process of its own, the two
alternating over --rounds. A run is --steps training steps at --batch on random CIFAR-sized
inputs; every 8th is an epoch's end instead (a short last batch and three eval forwards), so that
blocks of other sizes come and go as in a real run and fragmentation would show as memory growth.

    python benchmarks/allocator.py --model resnet18_1w1a --method siman --batch 256 --steps 24
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time


def child(args: argparse.Namespace) -> None:
    import torch

    from bnnkit import _allocator, create_model
    from bnnkit.analysis.bench import make_steps

    tuned = _allocator.tune()
    torch.manual_seed(0)
    model = create_model(args.model, args.method, **({"stage": args.stage} if args.method == "biper" else {}))

    def steps(batch: int) -> dict:
        return make_steps(model, torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,)), binary=True)

    full, last, tail = steps(args.batch), steps(max(1, args.batch * 5 // 16)), steps(16)
    page = os.sysconf("SC_PAGE_SIZE")
    times, rss = [], []
    for i in range(args.steps):
        t = time.perf_counter()
        if i % 8 == 7:
            last["train"]()
            full["eval"](), full["eval"](), tail["eval"]()
        else:
            full["train"]()
            times.append(time.perf_counter() - t)
        with open("/proc/self/statm") as f:
            rss.append(int(f.read().split()[1]) * page >> 20)
    print(json.dumps({"tuned": tuned, "step_s": statistics.median(times[1:]), "rss_mb": rss}))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet18_1w1a")
    p.add_argument("--method", default="siman", choices=["siman", "biper"])
    p.add_argument("--stage", type=int, default=2, choices=[1, 2], help="BiPer's stage")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--steps", type=int, default=24)
    p.add_argument("--rounds", type=int, default=1, help="tuned/untuned process pairs")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        child(args)
        return 0
    if args.steps < 3:
        p.error("--steps must be at least 3 (the first step is warm-up)")
    results: dict[str, list[dict]] = {"1": [], "0": []}
    for _ in range(args.rounds):
        for tune in results:
            run = subprocess.run([sys.executable, __file__, "--child", *(argv if argv is not None else sys.argv[1:])],
                                 env={**os.environ, "BNNKIT_MALLOC_TUNE": tune}, capture_output=True, text=True)
            if run.returncode:
                sys.exit(f"the {'tuned' if tune == '1' else 'untuned'} run failed:\n{run.stderr[-2000:]}")
            result = json.loads(run.stdout.strip().splitlines()[-1])
            if result["tuned"] != (tune == "1"):
                sys.exit("the allocator tuning did not apply (glibc on Linux only): nothing to compare")
            results[tune].append(result)
    print(f"{args.model} {args.method} batch {args.batch}, {args.steps} steps a run, medians after the first step")
    for tune, runs in results.items():
        label = "tuned  " if tune == "1" else "untuned"
        for r in runs:
            m = r["rss_mb"]
            print(f"  {label} step {r['step_s']:.2f} s   resident MB after step 1 / middle / last: "
                  f"{m[0]} / {m[len(m) // 2]} / {m[-1]}   (max {max(m)})")
    tuned = statistics.median(r["step_s"] for r in results["1"])
    untuned = statistics.median(r["step_s"] for r in results["0"])
    print(f"  untuned / tuned step time: {untuned / tuned:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
