"""What a training step spends on the weight side of every binary conv, and what the fused paths give.

    python benchmarks/weight_side.py                                       # SiMaN ResNet-18 (CIFAR), percent 0
    python benchmarks/weight_side.py --model resnet20_1w1a --percent 5     # with SiMaN's clipping
    python benchmarks/weight_side.py --method biper --stage 1              # BiPer, regulariser included

Times the weight quantizers of all binary convs at once (plus the method's regulariser), forward
and forward + backward, for two implementations interleaved over rounds so that machine noise
hits both alike, and prints the minimum and median of each:
- SiMaN (centring, clipping when percent > 0, standardisation, per-row median code): the native
  kernels (bnnkit.nn.functional, the CPU default) against the eager PyTorch ops (`--kernels eager`);
- BiPer (sin(f*w), and tau * mean(0.5 - 0.5 cos(2 f w)) per layer): the fused regulariser
  (SquaredSinePenalty) against autograd of the same formula.
Both give the same values (tests/test_activation_kernels.py, tests/test_quantizers.py).
"""
import argparse
import statistics
import time

import torch

from bnnkit import _allocator, create_model
from bnnkit.nn import functional
from bnnkit.nn.layers import binary_convs
from bnnkit.methods import method_of
from bnnkit.methods.biper import BiperWeight


def _plain_penalty(self: BiperWeight, weight: torch.Tensor) -> torch.Tensor:
    return self.tau * torch.mean(0.5 - 0.5 * torch.cos(2 * self.freq * weight))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="resnet18_1w1a")
    parser.add_argument("--method", choices=["siman", "biper"], default="siman")
    parser.add_argument("--percent", type=float, default=0.0, help="SiMaN's clipping percentile")
    parser.add_argument("--stage", type=int, default=1, help="BiPer's stage")
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args()
    _allocator.tune()  # as the bnnkit command does
    torch.manual_seed(0)
    settings = {"percent": args.percent} if args.method == "siman" else {"stage": args.stage}
    model = create_model(args.model, args.method, **settings).train()
    convs = [conv for _, conv in binary_convs(model)]
    method = method_of(model)
    weights = sum(conv.weight.numel() for conv in convs)

    def forward() -> list[torch.Tensor]:
        return [conv.weight_quantizer(conv.weight) for conv in convs] + [method.regularizer(model)]

    def step() -> None:
        outs = [o for o in forward() if o.requires_grad]  # a method without a regulariser gives a constant 0
        for conv in convs:
            conv.weight.grad = None
        torch.autograd.backward(outs, [torch.ones_like(o) for o in outs])

    fused_penalty = BiperWeight.penalty

    def use(kind: str) -> None:
        if args.method == "siman":
            functional.set_kernels(kind)
        else:
            BiperWeight.penalty = fused_penalty if kind == "fused" else _plain_penalty

    kinds = ("native", "eager") if args.method == "siman" else ("fused", "autograd")
    times: dict[tuple[str, str], list[float]] = {}
    try:
        for r in range(args.rounds + 1):
            for kind in kinds:
                use(kind)
                for what, fn in (("forward", forward), ("forward+backward", step)):
                    t = time.perf_counter()
                    fn()
                    if r:  # the first round warms up
                        times.setdefault((kind, what), []).append(time.perf_counter() - t)
    finally:
        functional.set_kernels("native")
        BiperWeight.penalty = fused_penalty
    print(f"{args.model} {args.method} {settings}: {len(convs)} binary convs, {weights / 1e6:.2f} M weights, "
          f"{torch.get_num_threads()} threads, {args.rounds} rounds")
    for (kind, what), ts in times.items():
        print(f"{kind:<8} {what:<17} min {1e3 * min(ts):7.1f} ms   median {1e3 * statistics.median(ts):7.1f} ms")


if __name__ == "__main__":
    main()
