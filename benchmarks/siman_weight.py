"""What the native SiMaN weight kernels give a training step: the weight side of every binary conv.

    python benchmarks/siman_weight.py                              # ResNet-18 (CIFAR), percent 0
    python benchmarks/siman_weight.py --model resnet20_1w1a --percent 5

Times, for every binary conv of the model at once, SiMaN's weight quantizer forward (centring,
clipping when percent > 0, standardisation, the per-row median code) and forward + backward, with
the native kernels (bnnkit.functional, the CPU default) and with the eager PyTorch ops
(`--kernels eager`), interleaved over rounds so that machine noise hits both alike; prints the
minimum and median of each. Both give the same codes and outputs (tests/test_activation_kernels.py).
"""
import argparse
import statistics
import time

import torch

from bnnkit import _allocator, create_model, functional
from bnnkit.layers import binary_convs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="resnet18_1w1a")
    parser.add_argument("--percent", type=float, default=0.0, help="SiMaN's clipping percentile")
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args()
    _allocator.tune()  # as the bnnkit command does
    torch.manual_seed(0)
    model = create_model(args.model, "siman", percent=args.percent).train()
    convs = [conv for _, conv in binary_convs(model)]
    weights = sum(conv.weight.numel() for conv in convs)

    def forward() -> list[torch.Tensor]:
        return [conv.weight_quantizer(conv.weight) for conv in convs]

    def step() -> None:
        outs = forward()
        for conv in convs:
            conv.weight.grad = None
        torch.autograd.backward(outs, [torch.ones_like(o) for o in outs])

    times: dict[tuple[str, str], list[float]] = {}
    for r in range(args.rounds + 1):
        for kind in ("native", "eager"):
            functional.set_kernels(kind)
            for what, fn in (("forward", forward), ("forward+backward", step)):
                t = time.perf_counter()
                fn()
                if r:  # the first round warms up
                    times.setdefault((kind, what), []).append(time.perf_counter() - t)
    functional.set_kernels("native")
    print(f"{args.model} SiMaN, percent {args.percent:g}: {len(convs)} binary convs, {weights / 1e6:.2f} M weights, "
          f"{torch.get_num_threads()} threads, {args.rounds} rounds")
    for (kind, what), ts in times.items():
        print(f"{kind:<7} {what:<17} min {1e3 * min(ts):7.1f} ms   median {1e3 * statistics.median(ts):7.1f} ms")


if __name__ == "__main__":
    main()
