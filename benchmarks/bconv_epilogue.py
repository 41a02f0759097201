"""What the packed binary conv's epilogue costs with a residual and a nonlinearity fused, against
PyTorch adding them in passes of their own, for the NCHW outputs packed eval writes, or the
channels-last ones of the deploy runtime.

    python benchmarks/bconv_epilogue.py                 # 2 threads, ResNet-20 (batch 256) and ResNet-18 (batch 64) shapes
    python benchmarks/bconv_epilogue.py --threads 1 --repeats 15
    python benchmarks/bconv_epilogue.py --channels-last --threads 1 --batch 1   # the deploy runtime's case

For each 3x3 conv, times (minimum over repeats, the variants interleaved, their order reversed
every other round): the conv alone; conv then `.add_(residual)`; conv, add, then torch.prelu or
F.hardtanh; and the same with the residual and nonlinearity in the kernel. The fused outputs are
checked equal to the unfused ones, bit for bit, before anything is timed.
"""
import argparse
import time

import torch
import torch.nn.functional as F

from bnnkit.native import kernels as _native

SHAPES = [(256, 16, 32, 1), (256, 32, 16, 1), (256, 64, 8, 1), (256, 16, 32, 2),
          (64, 64, 32, 1), (64, 128, 16, 1), (64, 256, 8, 1)]


def case(N: int, C: int, H: int, stride: int, threads: int, repeats: int, nchw: bool = True) -> dict[str, float]:
    isa = _native.resolve_isa()
    O = 2 * C if stride == 2 else C
    w = torch.where(torch.randn(O, C, 3, 3) < 0, -1.0, 1.0)
    conv = _native.PackedConv(_native.pack_weight_signs(w, threads), torch.rand(O) + 0.5, torch.randn(O),
                              prescale=torch.rand(O) + 0.1, in_channels=C, kernel=(3, 3), stride=(stride, stride),
                              padding=(1, 1), dilation=(1, 1), groups=1)
    layout = torch.contiguous_format if nchw else torch.channels_last
    x = torch.randn(N, C, H, H).contiguous(memory_format=layout)
    bits, _, ties = _native.pack(x, groups=1, pad=(1, 1), center=True, isa=isa, threads=threads)
    Ho, Wo = conv.out_size(H, H)
    res, slopes = torch.randn(N, O, Ho, Wo).contiguous(memory_format=layout), torch.rand(O) * 0.5
    prelu, hardtanh = _native.Nonlinearity.prelu(slopes, O), _native.Nonlinearity.hardtanh(-1.0, 1.0)

    def run(**kw):
        return conv(bits, H, H, (1, 1), isa=isa, threads=threads, ties=ties, nchw=nchw, **kw)

    variants = {
        "conv": lambda: run(),
        "+add": lambda: run().add_(res),
        "+add+prelu": lambda: torch.prelu(run().add_(res), slopes),
        "+add+hardtanh": lambda: F.hardtanh(run().add_(res), inplace=True),
        "fused add": lambda: run(residual=res),
        "fused add+prelu": lambda: run(residual=res, nonlinearity=prelu),
        "fused add+hardtanh": lambda: run(residual=res, nonlinearity=hardtanh),
    }
    for unfused, fused in (("+add", "fused add"), ("+add+prelu", "fused add+prelu"),
                           ("+add+hardtanh", "fused add+hardtanh")):
        assert torch.equal(variants[unfused](), variants[fused]()), fused
    best = {k: float("inf") for k in variants}
    for fn in variants.values():
        fn()
    for r in range(repeats):
        for k, fn in (list(variants.items()) if r % 2 else list(variants.items())[::-1]):
            t = time.perf_counter()
            fn()
            best[k] = min(best[k], time.perf_counter() - t)
    return {k: 1e3 * v for k, v in best.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--channels-last", action="store_true", help="channels-last input and output (the deploy runtime's)")
    parser.add_argument("--batch", type=int, default=None, help="one batch size for every shape (default: each shape's)")
    args = parser.parse_args()
    if _native.try_lib() is None:
        raise SystemExit("the native kernels are not built: pip install -e . (or python setup.py build_ext --inplace)")
    torch.set_num_threads(args.threads)
    layout = "channels-last" if args.channels_last else "NCHW"
    print(f"isa {_native.resolve_isa()}, {args.threads} threads, {layout} output, ms (minimum of {args.repeats})")
    names = None
    for N, C, H, stride in SHAPES:
        N = args.batch or N
        t = case(N, C, H, stride, args.threads, args.repeats, nchw=not args.channels_last)
        if names is None:
            names = list(t)
            print(f"{'N x C x H / stride':<20}" + "".join(f"{n:>19}" for n in names))
        print(f"{f'{N}x{C}x{H}/{stride}':<20}" + "".join(f"{t[n]:>19.2f}" for n in names))


if __name__ == "__main__":
    main()
