"""The deploy runtime with and without each block's residual add and activation fused into its
binary conv's epilogue (`deploy.load(..., fuse=False)`), end to end on one exported model.

    python benchmarks/deploy_fusion.py                                   # CIFAR ResNet-20 SiMaN, batch 64, 2 threads
    python benchmarks/deploy_fusion.py --method biper --model resnet18_1w1a --dataset imagenet --batch 1 --threads 1

Both runtimes load the same file and are checked to give the same logits, bit for bit; then they
run alternately (rounds x calls), and the medians of the per-call times are printed.
"""
import argparse
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import torch

import bnnkit
from bnnkit import deploy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="resnet20_1w1a")
    parser.add_argument("--method", default="siman", help="siman or biper (stage 2)")
    parser.add_argument("--dataset", default="cifar10")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--calls", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    kw = {"stage": 2} if args.method == "biper" else {}
    model = bnnkit.create_model(args.model, method=args.method, dataset=args.dataset, **kw).eval()
    size = 224 if args.dataset == "imagenet" else 32
    with tempfile.TemporaryDirectory() as d, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random weights exactly 0: exported exactly, with a warning
        path = Path(d) / "m.bnn"
        deploy.export(model, path, example_input_shape=(1, 3, size, size))
        nets = {"unfused": deploy.load(path, threads=args.threads, fuse=False),
                "fused": deploy.load(path, threads=args.threads)}
    x = torch.randn(args.batch, 3, size, size).contiguous(memory_format=torch.channels_last)
    if not torch.equal(nets["fused"](x), nets["unfused"](x)):
        raise SystemExit("fused and unfused logits differ: a bug, please report it")
    times = {k: [] for k in nets}
    for _ in range(args.rounds):
        for name, net in nets.items():
            t0 = time.perf_counter()
            for _ in range(args.calls):
                net(x)
            times[name].append((time.perf_counter() - t0) / args.calls * 1e3)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"{args.model} {args.method} {args.dataset}, batch {args.batch}, {args.threads} thread(s), channels-last input, "
          f"ms per call (median of {args.rounds} rounds x {args.calls} calls)")
    print(f"unfused {med['unfused']:.2f}  fused {med['fused']:.2f}  speed-up {med['unfused'] / med['fused']:.2f}x")


if __name__ == "__main__":
    main()
