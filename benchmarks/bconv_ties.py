"""What inputs exactly at their threshold (ties: sign 0, packed as +1) cost the packed binary conv.

    python benchmarks/bconv_ties.py                 # 2 threads, batch 256, NCHW in and out
    python benchmarks/bconv_ties.py --threads 1 --repeats 30

For each ResNet-20-sized 3x3 conv, times pack + conv (minimum over repeats) on a random input
with no ties, with one, and with about 4 % of its values set exactly to 0, the share untrained
BiPer ResNet-20 feeds its transition blocks. The result is checked against the float conv of
sign(x) before anything is timed.
"""
import argparse
import time

import torch
import torch.nn.functional as F

from bnnkit.native import kernels as _native
from bnnkit.native.bits import pack_signs


def best_ms(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1e3 * min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    isa = _native.resolve_isa()
    print(f"isa {isa}, {args.threads} threads, batch {args.batch}; ms per pack + conv (minimum of {args.repeats})")
    print(f"{'layer':<16} {'no ties':>9} {'1 tie':>9} {'4 % ties':>9} {'(count)':>9}")
    gen = torch.Generator().manual_seed(0)
    for C, H in ((16, 32), (32, 16), (64, 8)):
        w = torch.where(torch.randn(C, C, 3, 3, generator=gen) < 0, -1.0, 1.0)
        conv = _native.PackedConv(pack_signs(w < 0), torch.ones(C), torch.zeros(C), in_channels=C, kernel=(3, 3),
                                  stride=(1, 1), padding=(1, 1), dilation=(1, 1), groups=1)
        row = []
        for share in (0.0, None, 0.04):
            x = torch.randn(args.batch, C, H, H, generator=gen)
            if share is None:
                x[0, C // 2, H // 2, H // 2] = 0.0
            else:
                x[torch.rand(x.shape, generator=gen) < share] = 0.0

            def run(x=x):
                bits, _, ties = _native.pack(x, groups=1, pad=(1, 1), center=False, isa=isa, threads=args.threads)
                return conv(bits, H, H, (1, 1), isa=isa, threads=args.threads, ties=ties, nchw=True)

            want = F.conv2d(torch.sign(x).double(), w.double(), padding=1).float()
            if not torch.equal(run(), want):
                raise SystemExit(f"{C}-channel conv: the packed result differs from the float conv")
            row.append((best_ms(run, args.repeats), int((x == 0).sum())))
        print(f"{f'{C}ch {H}x{H}':<16} {row[0][0]:>9.2f} {row[1][0]:>9.2f} {row[2][0]:>9.2f} {row[2][1]:>9d}")


if __name__ == "__main__":
    main()
