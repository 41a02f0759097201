"""Benchmark of bnnkit's packed CPU runtime against PyTorch float32 eager, per layer and end to end.

    python benchmarks/deploy.py                       # ImageNet resnet18_1w1a (BiPer stage 2), 1 and all threads, batch 1 and 32
    python benchmarks/deploy.py --method siman --batch 1 --threads 1
    python benchmarks/deploy.py --model resnet20_1w1a --dataset cifar10 --json results.json

Same options and the same process set-up as `bnnkit bench-deploy` (bnnkit.deploy.cli_bench, with
glibc's allocator tuned as the bnnkit command tunes it: at batch 32 the packed network otherwise
takes 40,000 page faults a call, 294 against 236 ms). The float32 baseline is the same network with
plain nn.Conv2d in place of every binary conv; times are minima over repeats.
"""
import sys

from bnnkit import _allocator
from bnnkit.deploy import cli_bench

if __name__ == "__main__":
    _allocator.tune()
    sys.exit(cli_bench(sys.argv[1:]))
