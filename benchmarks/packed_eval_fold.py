"""What folding BatchNorm into the packed binary conv (bnnkit.nn.layers.conv_bn) gives an eval forward.

    python benchmarks/packed_eval_fold.py                          # SiMaN ResNet-20, NCHW, batch 256
    python benchmarks/packed_eval_fold.py --method biper --stage 2 --channels_last

Times one eval forward with the folding on and off (off: conv_bn runs the packed conv, then
PyTorch's BatchNorm and add), interleaved over rounds so that machine noise hits both alike, and
prints the minimum and median of each. Both settings give the same logits; that is checked first.
"""
import argparse
import statistics
import time

import torch

from bnnkit import _allocator, create_model
from bnnkit.nn import _packed_eval


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="resnet20_1w1a")
    parser.add_argument("--method", default="siman")
    parser.add_argument("--stage", type=int, default=None, help="BiPer's stage")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--channels_last", action="store_true")
    args = parser.parse_args()
    _allocator.tune()  # as the bnnkit command does
    torch.manual_seed(0)
    model = create_model(args.model, args.method, **({"stage": args.stage} if args.stage else {}))
    x = torch.randn(args.batch, 3, 32, 32)
    if args.channels_last:
        model, x = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    model.train()
    model(x)  # running statistics that are not the initial 0 and 1
    model.eval()
    foldable = _packed_eval._foldable
    settings = {"fold off": lambda bn, channels: False, "fold on": foldable}
    times: dict[str, list[float]] = {k: [] for k in settings}
    outs = {}
    try:
        with torch.no_grad():
            for _ in range(args.rounds):
                for name, rule in settings.items():
                    _packed_eval._foldable = rule
                    outs[name] = model(x)  # also warms this setting's caches
                    t = time.perf_counter()
                    model(x)
                    times[name].append(time.perf_counter() - t)
    finally:
        _packed_eval._foldable = foldable
    if not torch.equal(outs["fold off"], outs["fold on"]):
        raise SystemExit("the folded and unfolded eval logits differ")
    layout = "channels_last" if args.channels_last else "NCHW"
    print(f"{args.model} {args.method}{f' stage {args.stage}' if args.stage else ''}, batch {args.batch}, {layout}, "
          f"{torch.get_num_threads()} threads, {args.rounds} interleaved rounds")
    for name, ts in times.items():
        print(f"{name:9s} min {1e3 * min(ts):7.1f} ms   median {1e3 * statistics.median(ts):7.1f} ms")


if __name__ == "__main__":
    main()
