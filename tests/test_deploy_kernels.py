"""Native XOR-popcount kernels of bnnkit.deploy against a float reference, on every instruction-set
path this CPU has, and a bounds-checked debug build of the same sources."""
import ast
import importlib.util
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from bnnkit.deploy import DeployFormatError
from bnnkit.native import kernels as _native
from bnnkit.native.bits import pack_signs, unpack_signs

ISAS = _native.available_isas()
ROOT = Path(__file__).resolve().parents[1]

# (N, C, O, H, W, kernel, stride, padding, dilation, groups, center, buffer padding or None)
CASES = [
    (2, 64, 64, 9, 9, 3, 1, 1, 1, 1, False, None),
    (1, 3, 10, 7, 5, 3, 2, 1, 1, 1, True, None),       # fewer channels than a word, O not a multiple of 8
    (2, 130, 24, 6, 7, 3, 1, 2, 2, 1, False, None),    # 3 words, dilation 2, padding 2
    (1, 64, 64, 8, 8, 1, 2, 0, 1, 1, True, None),      # 1x1 stride 2 (SiMaN shortcut)
    (2, 64, 64, 9, 9, 1, 2, 0, 1, 1, False, 1),        # 1x1 reading a buffer padded for a 3x3 sibling
    (2, 32, 32, 9, 11, 3, 2, 1, 1, 2, False, None),    # groups
    (1, 64, 64, 7, 7, 3, 1, 1, 1, 4, True, None),      # 16 channels per group (MobileNet style)
    (1, 48, 36, 5, 5, 3, 1, 1, 1, 3, True, None),      # 12 out channels per group: a partial block
    (1, 16, 16, 17, 3, 5, 1, 2, 1, 1, False, None),    # 5x5, width smaller than the kernel window
    (1, 512, 512, 7, 7, 3, 1, 1, 1, 1, True, None),
    (2, 21, 24, 9, 10, 3, 1, 1, 1, 1, False, None),    # 21 channels: a kernel row's 3 taps fill 63 bits
    (1, 16, 16, 9, 9, 3, 1, 2, 2, 1, True, None),      # 16 channels, dilation 2: 3 taps a word, 2 columns apart
    (2, 32, 24, 9, 10, 3, 1, 1, 1, 1, True, None),     # 32 channels: a kernel row in 2 words, 2 taps and 1
    (1, 24, 16, 10, 9, 3, 2, 1, 1, 1, False, None),    # 24 channels, stride 2: 2 words a row, 48 bits and 24
    (1, 32, 8, 9, 9, 3, 1, 2, 2, 1, True, None),       # 32 channels, dilation 2: 2 words a row, taps 2 columns apart
]


def reference(x, thr, w_sign, pre, scale, bias, stride, pad, dil, groups):
    """PyTorch's definition: x_b = sign(x - threshold) (0 where equal), zero padding after
    binarization; then the model's `y * alpha` in float32 and its BatchNorm as one fused multiply-add."""
    xb = torch.sign(x - thr.view(-1, 1, 1, 1))
    y = F.conv2d(xb.double(), w_sign.double(), None, stride, pad, dil, groups).float() * pre.view(1, -1, 1, 1)
    return (y.double() * scale.double().view(1, -1, 1, 1) + bias.double().view(1, -1, 1, 1)).float()


def tied_input(N, C, H, W, gen, ties):
    """Inputs on a grid of 1/8 (so their sums are exact) whose per-sample sums are exactly 0, with
    activations exactly at the threshold (0 for either rule): about 5 % of them for ties="many",
    or a few per sample at a corner, an edge and the centre for ties="few"."""
    x = torch.round(torch.randn(N, C, H, W, generator=gen) * 12) / 8
    if ties == "few":
        x = torch.where(x == 0, torch.full_like(x, 0.125), x)
        x[:, C - 1, 0, 0] = 0
        x[:, 0, H - 1, W - 1] = 0
        x[:, C // 2, H // 2, W // 2] = 0
    x[:, 0, 0, 0] -= x.sum(dim=(1, 2, 3))
    return x


def run_case(case, isa, threads=2, seed=0, ties=None, nchw=False):
    """nchw: pack from an NCHW input and write an NCHW output (else both channels_last).
    ties: None, "few" or "many" (see tied_input). Returns the output, the float reference, the
    input, its thresholds and the reference's weight and layer arguments."""
    N, C, O, H, W, k, s, p, d, g, center, bpad = case
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(N, C, H, W, generator=gen) + 0.3 if ties is None else tied_input(N, C, H, W, gen, ties)
    w = torch.where(torch.randn(O, C // g, k, k, generator=gen) < 0, -1.0, 1.0)
    scale, bias = torch.rand(O, generator=gen) + 0.1, torch.randn(O, generator=gen)
    pre = torch.rand(O, generator=gen) + 0.5
    conv = _native.PackedConv(pack_signs(w < 0), scale, bias, prescale=pre, in_channels=C, kernel=(k, k),
                              stride=(s, s), padding=(p, p), dilation=(d, d), groups=g)
    bp = (p, p) if bpad is None else (bpad, bpad)
    xin = x if nchw else x.contiguous(memory_format=torch.channels_last)
    bits, thr, tie_rows = _native.pack(xin, groups=g, pad=bp, center=center, isa=isa, threads=threads)
    out = conv(bits, H, W, bp, isa=isa, threads=threads, ties=tie_rows, nchw=nchw)
    assert out.is_contiguous(memory_format=torch.contiguous_format if nchw else torch.channels_last)
    layer = (w, pre, scale, bias, s, p, d, g)
    return out, reference(x, thr, *layer), x, thr, layer


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("case", CASES, ids=lambda c: "x".join(map(str, c[:6])) + f"s{c[6]}p{c[7]}d{c[8]}g{c[9]}{'c' if c[10] else ''}")
@pytest.mark.parametrize("nchw", [False, True], ids=["nhwc", "nchw"])
def test_bconv_matches_float_reference(case, isa, nchw):
    out, ref, *_ = run_case(case, isa, nchw=nchw)
    assert out.shape == ref.shape
    # integer dot products, then the epilogue rounded as the model rounds (the reference's fma is
    # emulated in float64, which may differ in the last bit once in ~1e9 outputs)
    assert torch.allclose(out, ref, rtol=1e-6, atol=1e-5), (out - ref).abs().max()
    assert (out != ref).sum().item() <= 1


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("case", [CASES[i] for i in (0, 1, 2, 3, 5, 6, 9, 10, 11, 12, 13, 14)], ids=lambda c: "x".join(map(str, c[:6])) + f"d{c[8]}")
@pytest.mark.parametrize("nchw", [False, True], ids=["nhwc", "nchw"])
@pytest.mark.parametrize("ties", ["few", "many"])
def test_activations_exactly_at_the_threshold_count_zero(case, isa, nchw, ties):
    """sign(0) = 0: ties are recorded by the packer, and every tile subtracts what its ties added
    to its integer dot products, in the plain and the tap-packed layouts alike."""
    out, ref, x, thr, layer = run_case(case, isa, ties=ties, nchw=nchw)
    at_thr = x == thr.view(-1, 1, 1, 1)
    assert thr.abs().max().item() == 0.0
    assert at_thr.sum().item() >= (x.numel() // 40 if ties == "many" else 3 * x.shape[0])
    assert torch.allclose(out, ref, rtol=1e-6, atol=1e-4), (out - ref).abs().max()
    assert (out != ref).sum().item() <= 1
    wrong = reference(torch.where(at_thr, x + 1e-3, x), thr, *layer)
    assert not torch.allclose(out, wrong, rtol=1e-6, atol=1e-4)  # reading ties as +1 would be caught


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("case", [CASES[i] for i in (0, 1, 5, 10)], ids=lambda c: "x".join(map(str, c[:6])))
@pytest.mark.parametrize("nchw", [False, True], ids=["nhwc", "nchw"])
def test_residual_is_added_after_the_epilogue(case, isa, nchw):
    """conv(..., residual=r) == conv(...) + r to the bit (one float32 rounding, as PyTorch adds
    `bn(conv(x)) + r`), signed zeros included, in both output layouts."""
    N, C, O, H, W, k, s, p, d, g, center, _ = case
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(N, C, H, W, generator=gen)
    w = torch.randn(O, C // g, k, k, generator=gen) < 0
    conv = _native.PackedConv(pack_signs(w), torch.rand(O, generator=gen) + 0.1, torch.randn(O, generator=gen),
                              prescale=torch.rand(O, generator=gen) + 0.5, in_channels=C, kernel=(k, k),
                              stride=(s, s), padding=(p, p), dilation=(d, d), groups=g)
    layout = torch.contiguous_format if nchw else torch.channels_last
    bits, _, ties = _native.pack(x.contiguous(memory_format=layout), groups=g, pad=(p, p), center=center, isa=isa,
                                 threads=2)
    plain = conv(bits, H, W, (p, p), isa=isa, threads=2, ties=ties, nchw=nchw)
    res = torch.randn(plain.shape, generator=gen) * 3
    res.view(-1)[::7] = -plain.reshape(-1)[::7]  # sums of exactly 0
    res.view(-1)[1::11] = -0.0
    res = res.contiguous(memory_format=layout)
    out = conv(bits, H, W, (p, p), isa=isa, threads=2, ties=ties, nchw=nchw, residual=res)
    want = plain + res
    assert torch.equal(out, want) and torch.equal(torch.signbit(out), torch.signbit(want))
    with pytest.raises(DeployFormatError, match="residual"):  # another layout is refused, not misread
        conv(bits, H, W, (p, p), isa=isa, threads=2, nchw=nchw,
             residual=res.contiguous(memory_format=torch.channels_last if nchw else torch.contiguous_format))


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("case", [CASES[i] for i in (0, 1, 5, 7, 10)], ids=lambda c: "x".join(map(str, c[:6])))
@pytest.mark.parametrize("nchw", [False, True], ids=["nhwc", "nchw"])
def test_nonlinearity_is_applied_last_as_pytorch_does(case, isa, nchw):
    """conv(..., residual=r, nonlinearity=PReLU or Hardtanh) == torch's prelu / hardtanh of
    conv(...) + r to the bit: signed zeros, NaN, infinities, the clamp bounds and values one ulp
    either side of them included; with and without a residual, one slope or one per channel."""
    N, C, O, H, W, k, s, p, d, g, center, _ = case
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(N, C, H, W, generator=gen)
    w = torch.randn(O, C // g, k, k, generator=gen) < 0
    conv = _native.PackedConv(pack_signs(w), torch.rand(O, generator=gen) + 0.1, torch.randn(O, generator=gen) * 0.5,
                              prescale=(torch.rand(O, generator=gen) + 0.5) / (C // g), in_channels=C,
                              kernel=(k, k), stride=(s, s), padding=(p, p), dilation=(d, d), groups=g)
    layout = torch.contiguous_format if nchw else torch.channels_last
    bits, _, ties = _native.pack(x.contiguous(memory_format=layout), groups=g, pad=(p, p), center=center, isa=isa,
                                 threads=2)
    plain = conv(bits, H, W, (p, p), isa=isa, threads=2, ties=ties, nchw=nchw)
    res = torch.randn(plain.shape, generator=gen)
    one = torch.tensor([1.0, -1.0])
    special = torch.cat([torch.tensor([-0.0, 0.0, float("nan"), float("inf"), -float("inf"), 0.5, -0.25]), one,
                         torch.nextafter(one, one * 2), torch.nextafter(one, one * 0)])
    every5 = res.view(-1)[::5]
    every5.copy_(special.repeat(every5.numel() // len(special) + 1)[: every5.numel()])
    res.view(-1)[3::13] = -plain.reshape(-1)[3::13]  # sums of exactly 0
    res = res.contiguous(memory_format=layout)
    slopes = torch.randn(O, generator=gen)
    cases = [(_native.Nonlinearity.prelu(slopes, O), lambda t: torch.prelu(t, slopes)),
             (_native.Nonlinearity.prelu(slopes[:1], O), lambda t: torch.prelu(t, slopes[:1])),
             (_native.Nonlinearity.hardtanh(-1.0, 1.0), torch.nn.functional.hardtanh),
             (_native.Nonlinearity.hardtanh(-0.25, 0.5), lambda t: torch.nn.functional.hardtanh(t, -0.25, 0.5))]
    for nonlin, torch_fn in cases:
        for r in (None, res):
            out = conv(bits, H, W, (p, p), isa=isa, threads=2, ties=ties, nchw=nchw, residual=r, nonlinearity=nonlin)
            want = torch_fn(plain if r is None else plain + r)
            same = (out == want) | (out.isnan() & want.isnan())
            assert same.all() and torch.equal(torch.signbit(out), torch.signbit(want)), (nonlin.kind, r is None)
            assert out.is_contiguous(memory_format=layout)
    assert not torch.equal(torch.prelu(plain + res, slopes), plain + res)  # the cases do clamp and scale


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("width", [32, 30], ids=["rows_of_8k", "odd_rows"])
def test_large_nchw_outputs_equal_the_channels_last_ones(isa, width):
    """Outputs of 1M floats and more are stored NCHW with non-temporal stores (rows whose width is
    a multiple of 8): the same values as the channels-last output, residual and PReLU included."""
    N, C, O, H = 18, 64, 64, 32
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(N, C, H, width, generator=gen)
    conv = _native.PackedConv(pack_signs(torch.randn(O, C, 3, 3, generator=gen) < 0), torch.rand(O, generator=gen) + 0.1,
                              torch.randn(O, generator=gen), prescale=torch.rand(O, generator=gen) + 0.5, in_channels=C,
                              kernel=(3, 3), stride=(1, 1), padding=(1, 1), dilation=(1, 1), groups=1)
    res = torch.randn(N, O, H, width, generator=gen)
    nonlin = _native.Nonlinearity.prelu(torch.rand(O, generator=gen), O)
    outs = []
    for nchw in (True, False):
        layout = torch.contiguous_format if nchw else torch.channels_last
        bits, _, ties = _native.pack(x.contiguous(memory_format=layout), groups=1, pad=(1, 1), center=True, isa=isa,
                                     threads=2)
        outs.append([conv(bits, H, width, (1, 1), isa=isa, threads=2, ties=ties, nchw=nchw, residual=r, nonlinearity=nl)
                     for r, nl in ((None, None), (res.contiguous(memory_format=layout), nonlin))])
    assert outs[0][0].numel() >= 1 << 20
    for streamed, cached in zip(*outs):
        assert streamed.is_contiguous() and torch.equal(streamed, cached)


def test_isa_paths_and_thread_counts_agree_bitwise():
    assert ISAS[0] == "portable"
    for case in CASES:
        for ties in (None, "many"):
            outs = [run_case(case, isa, threads, ties=ties, nchw=nchw)[0]
                    for isa in ISAS for threads in (1, 2) for nchw in (False, True)]
            for o in outs[1:]:
                assert torch.equal(o, outs[0])


def test_centering_threshold_is_the_per_sample_mean():
    case = CASES[1]
    _, _, x, thr, _ = run_case(case, "portable")
    assert torch.allclose(thr, x.double().mean(dim=(1, 2, 3)).float(), rtol=0, atol=1e-6)
    _, _, x, thr, _ = run_case(CASES[0], "portable")
    assert torch.equal(thr, torch.zeros(2))


def test_pack_accepts_given_thresholds():
    x = torch.randn(3, 20, 5, 4)
    thr = torch.tensor([0.5, -0.25, 0.0])
    for isa in ISAS:
        bits, used, _ = _native.pack(x, groups=1, pad=(0, 0), center=True, isa=isa, threads=1, thresholds=thr)
        assert torch.equal(used, thr)
        want = (x < thr.view(-1, 1, 1, 1)).permute(0, 2, 3, 1).long()  # [N, H, W, C] bits
        got = torch.stack([(bits[..., 0] >> c) & 1 for c in range(20)], -1)
        assert torch.equal(got, want)


def _threads(n):
    """A context manager running PyTorch on n threads."""
    import contextlib

    @contextlib.contextmanager
    def cm():
        old = torch.get_num_threads()
        torch.set_num_threads(n)
        try:
            yield
        finally:
            torch.set_num_threads(old)
    return cm()


@pytest.mark.parametrize("isa", ISAS)
def test_native_copy_of_pytorchs_sum_order_gives_torch_mean_to_the_last_bit(isa):
    """pack's mode 3 sums each sample in the order of PyTorch's CPU sum; on one thread (where
    PyTorch sums serially) its mean must equal x.mean(dim=(1, 2, 3)) exactly: sizes that reach each
    level of the cascade (up to 4M values a sample) and leave tails, both layouts, values of mixed
    magnitude whose sums round often."""
    gen = torch.Generator().manual_seed(7)
    shapes = [(1, 1, 2, 4), (1, 1, 3, 3), (2, 3, 5, 7), (1, 64, 56, 56), (3, 130, 9, 13), (1, 512, 7, 7),
              (2, 256, 28, 28), (1, 1024, 64, 64), (1, 64, 127, 129)]
    mismatches = []
    with _threads(1):
        for shape in shapes:
            for scale in ("normal", "mixed"):
                x = torch.randn(shape, generator=gen) + 0.3
                if scale == "mixed":
                    x = x * torch.pow(10.0, torch.randint(-3, 4, shape, generator=gen).float())
                # mode 3: x summed in its own memory order; mode 4: channels-last x in NCHW order
                for layout, mode in ((torch.contiguous_format, 3), (torch.channels_last, 3), (torch.channels_last, 4)):
                    xl = x.contiguous(memory_format=layout)
                    if mode == 4 and xl.is_contiguous():
                        continue  # one memory order for both layouts (one channel)
                    key = (xl.shape, xl.stride(), xl.dtype, xl.is_cpu, 1, (1, 1), mode, isa)
                    plan = _native._pack_plan(xl, 1, (1, 1), mode, isa, key)
                    _, thr, _ = _native._pack(xl, plan, isa, 2, None)
                    want = (xl if mode == 3 else x.contiguous()).mean(dim=(1, 2, 3))
                    if not torch.equal(thr, want):
                        mismatches.append((shape, scale, layout, mode, thr - want))
                    # the public call takes the native path here, and returns the same
                    assert _native._native_torch_mean_ok(xl, plan, mode, isa)
                    _, thr2, _ = _native.pack(xl, groups=1, pad=(1, 1), center=True, isa=isa, threads=1, torch_mean=True,
                                              mean_layout=torch.contiguous_format if mode == 4 else None)
                    assert torch.equal(thr2, want)
    assert not mismatches, mismatches
    # a plain double-precision mean is not the same: the test can tell them apart
    x = torch.randn(1, 64, 56, 56, generator=gen) * torch.pow(10.0, torch.randint(-3, 4, (1, 64, 56, 56), generator=gen).float())
    assert any(not torch.equal(_native.pack(x[:, :, :k], groups=1, pad=(0, 0), center=True, isa=isa, threads=1)[1],
                               x[:, :, :k].contiguous().mean(dim=(1, 2, 3))) for k in range(20, 56))


def test_pytorch_order_mean_is_left_to_pytorch_where_it_would_differ():
    """Where PyTorch would sum on several threads, or read x in an order of its own, or sum fewer
    than 8 values another way, pack asks PyTorch for the mean; the results stay PyTorch's."""
    isa = ISAS[-1]
    gen = torch.Generator().manual_seed(8)

    def ok(x, mode=3):
        key = (x.shape, x.stride(), x.dtype, x.is_cpu, 1, (0, 0), mode, isa)
        return _native._native_torch_mean_ok(x, _native._pack_plan(x, 1, (0, 0), mode, isa, key), mode, isa)

    big, small = torch.randn(1, 64, 56, 56, generator=gen), torch.randn(1, 16, 32, 32, generator=gen)
    strided = torch.randn(1, 64, 56, 112, generator=gen)[..., ::2]
    tiny = torch.randn(2, 1, 1, 7, generator=gen)
    with _threads(2):
        assert not ok(big) and ok(small)  # 16,384 values: serial on any number of threads
        assert not ok(strided) and not ok(tiny) and not ok(big.double())
        for x in (big, small, strided, tiny):
            _, thr, _ = _native.pack(x, groups=1, pad=(0, 0), center=True, isa=isa, threads=2, torch_mean=True)
            assert torch.equal(thr, x.mean(dim=(1, 2, 3)))
    with _threads(1):
        assert ok(big) and not ok(big, mode=4)  # NCHW order from an NCHW tensor: that is mode 3
        for x in (big, big.contiguous(memory_format=torch.channels_last), strided):
            for layout in (torch.contiguous_format, torch.channels_last):  # x in another layout: mode 4 or PyTorch's
                _, thr, _ = _native.pack(x, groups=1, pad=(0, 0), center=True, isa=isa, threads=1, torch_mean=True,
                                         mean_layout=layout)
                assert torch.equal(thr, x.contiguous(memory_format=layout).mean(dim=(1, 2, 3)))


def test_calls_checked_once_per_shape_still_follow_each_input_and_each_copys_constants():
    """The wrappers check an input's geometry once and keep the native call's arguments: later
    calls with another size, layout, dtype or thresholds, and copies with other constants or
    weights, must still get their own."""
    gen = torch.Generator().manual_seed(3)
    C, O = 40, 16
    w = torch.where(torch.randn(O, C, 3, 3, generator=gen) < 0, -1.0, 1.0)
    scale, bias, pre = torch.rand(O, generator=gen) + 0.1, torch.randn(O, generator=gen), torch.rand(O, generator=gen) + 0.5
    conv = _native.PackedConv(pack_signs(w < 0), scale, bias, prescale=pre, in_channels=C, kernel=(3, 3),
                              stride=(1, 1), padding=(1, 1), dilation=(1, 1), groups=1)
    zeros = torch.zeros(2)

    def check(c, w_, scale_, bias_, x, nchw, thresholds=None):
        xin = x if nchw else x.contiguous(memory_format=torch.channels_last)
        bits, thr, ties = _native.pack(xin, groups=1, pad=[1, 1], center=thresholds is not None, isa=ISAS[-1],
                                       threads=1, thresholds=thresholds)
        assert torch.equal(thr, zeros if thresholds is None else thresholds)
        out = c(bits, x.shape[2], x.shape[3], [1, 1], isa=ISAS[-1], threads=1, ties=ties, nchw=nchw)
        ref = reference(x.float(), thr, w_, pre, scale_, bias_, 1, 1, 1, 1)
        assert out.shape == ref.shape
        assert torch.allclose(out, ref, rtol=1e-6, atol=1e-5)

    for H, W in ((9, 9), (6, 11), (9, 9)):
        for nchw in (False, True):
            check(conv, w, scale, bias, torch.randn(2, C, H, W, generator=gen), nchw)
    check(conv, w, scale, bias, torch.randn(2, C, 9, 9, generator=gen, dtype=torch.float64), True)  # converted
    check(conv, w, scale, bias, torch.randn(2, C, 9, 9, generator=gen), False, torch.tensor([0.3, -0.2]))
    scale2, bias2 = torch.rand(O, generator=gen) + 0.1, torch.randn(O, generator=gen)
    other = conv.with_epilogue(scale2, bias2, prescale=pre)
    flipped = conv.with_weights(pack_signs(w > 0), scale, bias, prescale=pre)
    for _ in range(2):
        x = torch.randn(2, C, 9, 9, generator=gen)
        check(other, w, scale2, bias2, x, False)
        check(flipped, -w, scale, bias, x, False)
        check(conv, w, scale, bias, x, False)
    bits, _, _ = _native.pack(torch.randn(2, C, 9, 9), groups=1, pad=(1, 1), center=False, isa=ISAS[-1], threads=1)
    with pytest.raises(DeployFormatError, match="do not match"):
        conv(bits, 9, 8, (1, 1), isa=ISAS[-1], threads=1)  # a known shape with the wrong size


@pytest.mark.parametrize("isa", ISAS)
def test_pack_ties_are_exactly_the_values_equal_to_the_threshold(isa):
    """Whole-word rows are screened for ties by magnitude, which -t and -0.0 pass too: only values
    equal to t may be reported, each once, with its bits +1."""
    gen = torch.Generator().manual_seed(4)
    for t in (0.5, 0.0):
        x = torch.randn(2, 128, 5, 6, generator=gen)
        x[0, 3, 1, 2] = x[1, 127, 4, 5] = t
        x[0, 64, 0, 0] = x[1, 5, 2, 3] = -t if t else -0.0
        x[1, 0, 0, 0] = t if t else -0.0  # -0.0 == 0.0: a tie too
        want = {(0, 1, 2, 3), (1, 4, 5, 127), (1, 0, 0, 0)} | ({(0, 0, 0, 64), (1, 2, 3, 5)} if t == 0 else set())
        xl = x.contiguous(memory_format=torch.channels_last)
        bits, _, ties = _native.pack(xl, groups=1, pad=(0, 0), center=True, isa=isa, threads=2,
                                     thresholds=torch.full((2,), t))
        assert sorted(map(tuple, ties.tolist())) == sorted(want)
        got = torch.stack([(bits[..., c // 64] >> (c % 64)) & 1 for c in range(128)], -1)
        assert torch.equal(got, (x < t).permute(0, 2, 3, 1).long())
        bits2, none, ties2 = _native.pack(xl, groups=1, pad=(0, 0), center=True, isa=isa, threads=2,
                                          thresholds=torch.full((2,), t), return_thresholds=False)
        assert none is None and torch.equal(bits2, bits) and sorted(map(tuple, ties2.tolist())) == sorted(want)


@pytest.mark.parametrize("shape, groups", [((2, 70, 45, 50), 1), ((1, 16, 3, 2100), 1), ((3, 48, 7, 7), 2),
                                           ((2, 130, 9, 13), 1)], ids=["row-blocks", "wide", "groups", "3words"])
def test_pack_reads_nchw_as_channels_last(shape, groups, debug_lib):
    """NCHW inputs are packed a block of rows at a time, channel by channel: the same bits and ties
    as the channels-last path, for blocks that split samples' rows (H*W > 2048), rows wider than
    a block, row lengths off the vector width, several words and groups, on 1 and 2 threads (and
    the bounds-checked build)."""
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(shape, generator=gen)
    x.view(-1)[torch.randint(0, x.numel(), (7,), generator=gen)] = 0.0  # ties
    results = []
    for lib in (_native.lib(), debug_lib):
        old = _native.set_library(lib)
        try:
            for isa in ISAS:
                for threads in (1, 2):
                    for xin in (x, x.contiguous(memory_format=torch.channels_last)):
                        bits, _, ties = _native.pack(xin, groups=groups, pad=(1, 2), center=False, isa=isa, threads=threads)
                        t = ties.long()
                        order = ((t[:, 0] * shape[2] + t[:, 1]) * shape[3] + t[:, 2]) * shape[1] + t[:, 3]
                        results.append((bits, ties[order.argsort()]))
        finally:
            _native.set_library(old)
    assert results[0][1].shape[0] == 7
    for bits, ties in results[1:]:
        assert torch.equal(bits, results[0][0]) and torch.equal(ties, results[0][1])


def test_stem_batchnorm_activation_and_max_pooling_in_one_pass(debug_lib):
    """bn_act_max_pool against F.batch_norm, the activation and F.max_pool2d: the same values for
    every activation, NCHW, channels-last and strided inputs, square and uneven windows with and
    without padding, odd sizes, and NaN, infinities and -0.0 among the inputs (PyTorch's max takes
    NaN, then the first of equal values); on 1 and 2 threads and in the bounds-checked build.
    Strided inputs, whose BatchNorm PyTorch rounds another way, are refused."""
    from bnnkit.native.affine import bn_affine
    gen = torch.Generator().manual_seed(9)
    C = 24
    bn = torch.nn.BatchNorm2d(C).eval()
    with torch.no_grad():
        bn.running_mean.normal_(generator=gen)
        bn.running_var.uniform_(0.1, 2.0, generator=gen)
        bn.weight.normal_(generator=gen)  # negative scales too: BatchNorm must come before the max
        bn.bias.normal_(generator=gen)
    scale, bias = bn_affine(bn)
    slopes = torch.rand(C, generator=gen) - 0.5
    acts = {None: (None, lambda y: y), "relu": (_native.Nonlinearity.hardtanh(0.0, float("inf")), F.relu),
            "hardtanh": (_native.Nonlinearity.hardtanh(-1.0, 1.0), F.hardtanh),
            "prelu": (_native.Nonlinearity.prelu(slopes, C), lambda y: F.prelu(y, slopes))}
    x = torch.randn(2, C, 15, 12, generator=gen) * 3
    x[0, 3, 4, 5], x[1, 7, 0, 0], x[0, 0, 14, 11], x[1, 2, 6, 6] = float("nan"), float("inf"), -float("inf"), -0.0
    inputs = [x, x.contiguous(memory_format=torch.channels_last)]
    windows = [((3, 3), (2, 2), (1, 1)), ((2, 3), (1, 2), (1, 0)), ((3, 3), (3, 3), (0, 0)), ((1, 1), (1, 1), (0, 0))]
    for lib in (_native.lib(), debug_lib):
        old = _native.set_library(lib)
        try:
            for (nonlin, act), xin, (k, st, p) in ((a, i, w) for a in acts.values() for i in inputs for w in windows):
                with torch.no_grad():
                    want = F.max_pool2d(act(bn(xin)), k, st, p)
                for threads in (1, 2):
                    got = _native.bn_act_max_pool(xin, scale, bias, nonlin, k, st, p, threads)
                    assert got.is_contiguous(memory_format=torch.channels_last) and got.shape == want.shape
                    assert torch.equal(got.nan_to_num(), want.nan_to_num()) and torch.equal(got.isnan(), want.isnan())
        finally:
            _native.set_library(old)
    with pytest.raises(DeployFormatError, match="max pooling"):
        _native.bn_act_max_pool(x, scale, bias, None, (3, 3), (2, 2), (2, 2), 1)  # padding over half the window
    with pytest.raises(DeployFormatError, match="contiguous"):
        _native.bn_act_max_pool(torch.randn(2, C, 15, 24)[..., ::2], scale, bias, None, (3, 3), (2, 2), (1, 1), 1)


def test_weight_signs_pack_natively_and_refuse_anything_but_plus_minus_one(debug_lib):
    """pack_weight_signs: _bits.pack_signs's words for ±1 weights in any layout (3 words, a
    sliced kernel), on 1 and 2 threads and in the bounds-checked build; None for 0, -0.0, a
    scaled sign or NaN anywhere."""
    gen = torch.Generator().manual_seed(5)
    w = torch.where(torch.rand(6, 130, 3, 3, generator=gen) < 0.5, -1.0, 1.0)
    views = [w, w.contiguous(memory_format=torch.channels_last), w[:, :, :, :2], w[:, 5:70]]
    for lib in (_native.lib(), debug_lib):
        old = _native.set_library(lib)
        try:
            for view in views:
                for threads in (1, 2):
                    assert torch.equal(_native.pack_weight_signs(view, threads), pack_signs(view < 0))
            for bad in (0.0, -0.0, 0.5, float("nan")):
                v = w.clone()
                v[4, 129, 2, 1] = bad
                assert _native.pack_weight_signs(v, 2) is None, bad
        finally:
            _native.set_library(old)


def test_pack_bit_layout():
    x = torch.ones(1, 70, 2, 1)
    x[0, 0, 0, 0] = -1.0       # word 0 bit 0
    x[0, 63, 1, 0] = -0.5      # word 0 bit 63
    x[0, 69, 1, 0] = -2.0      # word 1 bit 5
    x[0, 5, 1, 0] = 0.0        # exactly 0 (sign 0) -> +1: bit stays 0
    for isa in ISAS:
        bits, _, ties = _native.pack(x, groups=1, pad=(1, 1), center=False, isa=isa, threads=1)
        assert ties.tolist() == [[0, 1, 0, 5]]  # the exact 0 at channel 5 of pixel (1, 0)
        assert bits.shape == (1, 4, 3, 2)
        u = bits.view(torch.int64)
        assert u[0, 1, 1, 0].item() == 1 and u[0, 1, 1, 1].item() == 0
        assert u[0, 2, 1, 0].item() == -(2 ** 63) and u[0, 2, 1, 1].item() == 1 << 5
        border = bits.clone()
        border[0, 1:3, 1] = 0
        assert not border.any()  # the zero-padding border holds +1 (bit 0)


def test_weight_bits_round_trip():
    w = torch.where(torch.randn(5, 70, 3, 2) < 0, -1.0, 1.0)
    words = pack_signs(w < 0)
    assert words.shape == (5, 6, 2) and words.dtype == torch.int64
    assert torch.equal(unpack_signs(words, 70, (3, 2)), w)


def test_isa_can_be_forced_by_environment(monkeypatch):
    for isa in ISAS:
        monkeypatch.setenv("BNNKIT_ISA", isa)
        assert _native.resolve_isa() == isa
    monkeypatch.setenv("BNNKIT_ISA", "auto")
    assert _native.resolve_isa() == ISAS[-1]
    monkeypatch.setenv("BNNKIT_ISA", "sse9")
    with pytest.raises(ValueError, match="unknown instruction set"):
        _native.resolve_isa()


def test_kernel_refuses_inconsistent_buffers():
    case = CASES[0]
    N, C, O, H, W, k, s, p, d, g, center, _ = case
    w = torch.ones(O, C, k, k)
    conv = _native.PackedConv(pack_signs(w < 0), torch.ones(O), torch.zeros(O), in_channels=C, kernel=(k, k),
                              stride=(s, s), padding=(p, p), dilation=(d, d), groups=g)
    bits, _, _ = _native.pack(torch.randn(N, C, H, W), groups=1, pad=(p, p), center=False, isa="portable", threads=1)
    with pytest.raises(DeployFormatError, match="do not match"):
        conv(bits, H + 1, W, (p, p), isa="portable", threads=1)
    with pytest.raises(DeployFormatError, match="less padding"):
        conv(bits[:, 1:-1, 1:-1].contiguous(), H, W, (0, 0), isa="portable", threads=1)
    with pytest.raises(DeployFormatError, match="dtype"):
        conv(bits.float(), H, W, (p, p), isa="portable", threads=1)
    with pytest.raises(DeployFormatError, match="words per position"):
        _native.PackedConv(pack_signs(w < 0)[:, :, :0], torch.ones(O), torch.zeros(O), in_channels=C, kernel=(k, k),
                           stride=(1, 1), padding=(1, 1), dilation=(1, 1), groups=1)


# ---- the bounds-checked debug build ------------------------------------------------------------
def _extension_sources() -> list[str]:
    """setup.py's SOURCES (read, not run): the files of this machine's extension, not every csrc/*.cpp
    (csrc/bnn_neon.cpp builds on AArch64 only)."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    return next(ast.literal_eval(node.value) for node in tree.body
                if isinstance(node, ast.Assign) and [t.id for t in node.targets if isinstance(t, ast.Name)] == ["SOURCES"])


def _build_debug(tmp: Path):
    name = "_kernels_debug"
    ext = sysconfig.get_config_var("EXT_SUFFIX")
    out = tmp / f"{name}{ext}"
    cmd = ["g++", "-shared", "-fPIC", "-O1", "-g", "-std=c++17", "-fopenmp", "-ffp-contract=off", "-DBNNKIT_DEBUG",
           f"-DBNNKIT_MODULE_NAME={name}", f"-I{ROOT / 'csrc'}", f"-I{sysconfig.get_paths()['include']}",
           *(str(ROOT / src) for src in _extension_sources()),
           "-o", str(out)]
    subprocess.run(cmd, check=True, capture_output=True, timeout=300)
    spec = importlib.util.spec_from_file_location(name, out)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def debug_lib(tmp_path_factory):
    if sys.platform != "linux":
        pytest.fail("the debug-build test needs g++ on Linux")
    return _build_debug(tmp_path_factory.mktemp("debug_build"))


def test_debug_build_runs_layers_within_bounds(debug_lib):
    assert debug_lib.build_info()["debug"] is True
    old = _native.set_library(debug_lib)
    try:
        for case in (CASES[1], CASES[2], CASES[4], CASES[6], CASES[8], CASES[11], CASES[12], CASES[13], CASES[14]):
            for isa in ISAS:
                for nchw, ties in ((False, None), (True, None), (False, "many"), (True, "few")):
                    out, ref, *_ = run_case(case, isa, nchw=nchw, ties=ties)
                    assert torch.allclose(out, ref, rtol=1e-6, atol=1e-4)
        # whole-word rows (128 channels) and PyTorch's mean taken natively (under 32768 values: serial)
        x = torch.randn(2, 128, 9, 7, generator=torch.Generator().manual_seed(2))
        xl = x.contiguous(memory_format=torch.channels_last)
        for isa in ISAS:
            for xin, layout in ((x, None), (xl, None), (xl, torch.contiguous_format)):  # the last: NCHW order
                bits, thr, ties = _native.pack(xin, groups=1, pad=(1, 1), center=True, isa=isa, threads=2, torch_mean=True,
                                               mean_layout=layout)
                assert torch.equal(thr, (x if layout else xin).mean(dim=(1, 2, 3))) and bits.shape == (2, 11, 9, 2)
    finally:
        _native.set_library(old)


def test_debug_build_catches_an_out_of_bounds_read(debug_lib):
    """Lie to the kernel about a buffer's length: the checked build reports it, touching nothing."""
    N, C, O, H, W, k = 1, 64, 8, 4, 4, 3
    conv = _native.PackedConv(pack_signs(torch.ones(O, C, k, k) < 0), torch.ones(O), torch.zeros(O), in_channels=C,
                              kernel=(k, k), stride=(1, 1), padding=(1, 1), dilation=(1, 1), groups=1)
    bits, _, _ = _native.pack(torch.randn(N, C, H, W), groups=1, pad=(1, 1), center=False, isa="portable", threads=1)
    out = torch.empty(N, H, W, O)
    row_cls, col_cls, table = conv.borders(H, W)
    args = [bits.data_ptr(), bits.numel() - 7, N, H, W, H + 2, W + 2, 1, 1, 1, C, 1, O, 1, k, k, 1, 1, 1, 1, 1, 1, H, W,
            conv.wk.data_ptr(), conv.wk.numel(), table.data_ptr(), table.numel(),
            conv.scale.data_ptr(), conv.bias.data_ptr(), conv.scale.numel(), out.data_ptr(), out.numel(), 0, 0,
            conv.pre.data_ptr(), 0, row_cls.data_ptr(), col_cls.data_ptr(), table.shape[1], 0, 0, k, 1, C, 0, 0, 0, 0, 0]
    for isa in ISAS:
        with pytest.raises(RuntimeError, match="bounds check failed.*bconv activations"):
            debug_lib.bconv(_native.ISA_CODES[isa], 1, args)
    args[1] = bits.numel()
    args[32] = out.numel() - 1
    with pytest.raises(RuntimeError, match="bconv output"):
        debug_lib.bconv(_native.ISA_CODES["portable"], 2, args)
    args[36] = 1  # NCHW output: its stores are checked as well
    for isa in ISAS:
        with pytest.raises(RuntimeError, match="bconv output"):
            debug_lib.bconv(_native.ISA_CODES[isa], 1, args)
    args[36] = 0
    args[32] = out.numel()
    args[39] = table.shape[1] + 1  # a column class count that sends the last rows past the table
    for isa in ISAS:
        with pytest.raises(RuntimeError, match="bconv border corrections"):
            debug_lib.bconv(_native.ISA_CODES[isa], 1, args)
    args[39] = table.shape[1]
    ties = torch.tensor([[0, 1, 1, 3]], dtype=torch.int32)
    tie_w = conv._tie_weights()
    args[33:35] = [ties.data_ptr(), 1]
    args[40:42] = [tie_w.data_ptr(), tie_w.numel()]
    debug_lib.bconv(_native.ISA_CODES["portable"], 1, args)     # a tie inside the image: fine
    args[41] = 8                                               # too few tie weights: caught
    for isa in ISAS:
        with pytest.raises(RuntimeError, match="tie weights"):
            debug_lib.bconv(_native.ISA_CODES[isa], 1, args)
    args[41] = tie_w.numel()
    for bad in ([1, 1, 1, 3], [0, 1, W, 3], [0, 0, 0, C], [0, -1, 0, 0]):  # outside the input: refused
        ties[0] = torch.tensor(bad)
        with pytest.raises(ValueError, match="lies outside"):
            _native.lib().bconv(_native.ISA_CODES["portable"], 1, args)
    ties[0] = torch.tensor([0, 1, 1, 3])
    res = torch.zeros(N, H, W, O)
    args[45:47] = [res.data_ptr(), res.numel() - 1]            # a residual one short: caught
    for isa in ISAS:
        for nchw in (0, 1):
            args[36] = nchw
            with pytest.raises(RuntimeError, match="bconv residual"):
                debug_lib.bconv(_native.ISA_CODES[isa], 1, args)
    args[36] = 0
    args[45:47] = [0, 0]
    slopes = torch.ones(O)
    for kind, n in ((1, O - 1), (2, 3), (3, 0), (1, 0)):                 # wrong parameter counts: refused
        args[47:50] = [kind, slopes.data_ptr() if n else 0, n]
        with pytest.raises(ValueError, match="nonlinearity"):
            debug_lib.bconv(_native.ISA_CODES["portable"], 1, args)
    for nchw in (0, 1):                                                  # a PReLU within bounds: fine
        args[36], args[47:50] = nchw, [1, slopes.data_ptr(), O]
        for isa in ISAS:
            debug_lib.bconv(_native.ISA_CODES[isa], 1, args)
    args[36], args[47:50] = 0, [0, 0, 0]
    args[6] = W + 4                                            # lie about the row length: caught
    with pytest.raises(RuntimeError, match="bounds check failed"):
        debug_lib.bconv(_native.ISA_CODES["portable"], 1, args)


@pytest.mark.parametrize("channels, groups, kernel, words", [(16, 1, 3, 1), (21, 1, 3, 1), (3, 1, 7, 1), (22, 1, 3, 2),
                                                            (32, 1, 3, 2), (16, 1, 5, 2), (33, 1, 3, 0), (64, 1, 3, 0),
                                                            (16, 2, 3, 0), (16, 1, 1, 0)])
def test_narrow_layers_pack_their_kernel_taps(channels, groups, kernel, words):
    """A layer of up to 32 channels in one group runs as a KH x 1 conv over words of side-by-side
    taps, as many as fit a word (tap_words words a kernel row; 0 = the plain layout, one word a
    tap); the CASES above, seven of them narrow, check the results."""
    O = 8
    w = torch.randn(O, channels // groups, kernel, kernel) < 0
    conv = _native.PackedConv(pack_signs(w), torch.ones(O), torch.zeros(O), in_channels=channels,
                              kernel=(kernel, kernel), stride=(1, 1), padding=(1, 1), dilation=(1, 1), groups=groups)
    assert conv.tap_words == words


def test_count_words_counts_the_kernels_xor_popcount_steps():
    """count_words() adds, per conv call, output pixels x output channels padded to blocks of 8 x
    the words of one dot product (KH x KW x words a tap, or KH x tap_words for a narrow layer)."""
    N, H = 2, 5
    with _native.count_words() as outer:
        for C, O, steps in ((64, 24, 9), (130, 8, 27), (16, 12, 3), (32, 8, 6)):
            conv = _native.PackedConv(pack_signs(torch.randn(O, C, 3, 3) < 0), torch.ones(O), torch.zeros(O),
                                      in_channels=C, kernel=(3, 3), stride=(1, 1), padding=(1, 1), dilation=(1, 1),
                                      groups=1)
            bits, _, ties = _native.pack(torch.randn(N, C, H, H), groups=1, pad=(1, 1), center=False, isa="portable",
                                         threads=1)
            with _native.count_words() as inner:
                conv(bits, H, H, (1, 1), isa="portable", threads=1, ties=ties)
                conv(bits, H, H, (1, 1), isa="portable", threads=1, ties=ties)
            assert inner[0] == 2 * N * H * H * -(-O // 8) * 8 * steps
    assert outer[0] == 2 * N * H * H * (24 * 9 + 8 * 27 + 16 * 3 + 8 * 6)  # the inner counts add up
    conv(bits, H, H, (1, 1), isa="portable", threads=1, ties=ties)  # outside any count: runs uncounted


def test_fma_float32_rounds_once():
    """The folded BatchNorm's b = fma(-mean, a, bias) and the epilogue need one float32 rounding of
    the exact x*y + z; float64 arithmetic rounds twice, which errs when its sum lands exactly on a
    float32 midpoint. Here x*y = -2^-24 + 2^-60 and z = 1 + 2^-23: the exact sum lies just above the
    midpoint 1 + 2^-24 (so rounds up), the float64 sum is the midpoint itself (so rounds to even)."""
    from bnnkit.native.affine import _fma_exact, fma_float32
    x = torch.tensor([-(2.0 ** -24) * (1 - 2.0 ** -18)])
    y = torch.tensor([1 + 2.0 ** -18])
    z = torch.tensor([1 + 2.0 ** -23])
    assert (x.double() * y.double() + z.double()).float().item() == 1.0  # twice rounded: wrong
    assert fma_float32(x, y, z).item() == 1 + 2.0 ** -23
    gen = torch.Generator().manual_seed(0)
    x, y, z = (torch.randn(2000, generator=gen) * torch.exp(3 * torch.randn(2000, generator=gen)) for _ in range(3))
    want = torch.tensor([_fma_exact(a, b, c) for a, b, c in zip(x.tolist(), y.tolist(), z.tolist())])
    assert torch.equal(fma_float32(x, y, z), want)


def test_debug_build_runs_the_activation_kernels_within_bounds(debug_lib):
    """The training kernels of csrc/bnn_act.cpp, checked: the same bits as the release build."""
    torch.manual_seed(0)
    x, g = torch.randn(3, 5, 9, 11), torch.randn(3, 5, 9, 11)
    for centered, sign_slope in ((1, 0), (0, 0), (1, 1)):
        results = []
        for lib in (_native.lib(), debug_lib):
            out, dx, mean, rstd = torch.empty_like(x), torch.empty_like(x), torch.empty(3), torch.empty(3)
            lib.act_forward(2, (x.data_ptr(), x.numel(), 0, out.data_ptr(), mean.data_ptr(), rstd.data_ptr(), 3, 495,
                                centered, 0))
            lib.act_backward(2, (x.data_ptr(), x.numel(), g.data_ptr(), dx.data_ptr(), mean.data_ptr(),
                                 rstd.data_ptr(), 3, 495, centered, sign_slope))
            results.append((out, dx, mean, rstd))
        for release, checked in zip(*results):
            assert torch.equal(release, checked)
    bounds = torch.tensor([0.2, 1.5])
    for center, clip, update in ((1, 0, 1), (0, 1, 1), (0, 0, 0)):  # SiMaN's weight rows: 15 rows of 33
        results = []
        for lib in (_native.lib(), debug_lib):
            w, code = x.reshape(15, 99)[:, :33].clone(), (g.reshape(15, 99)[:, :33] > 0).float()
            wb, mean, rstd, values = torch.empty_like(w), torch.empty(15), torch.empty(15), torch.empty(3)
            ranks = torch.tensor([0, 247, 494])
            lib.siman_center_ranks(2, (w.data_ptr(), w.numel(), 15, 33, ranks.data_ptr(), 3, values.data_ptr()))
            lib.siman_weight(2, (w.data_ptr(), w.numel(), code.data_ptr(), wb.data_ptr(), mean.data_ptr(),
                                 rstd.data_ptr(), 15, 33, center, bounds.data_ptr() if clip else 0, update))
            results.append((w, code, wb, mean, rstd, values))
        for release, checked in zip(*results):
            assert torch.equal(release, checked)
    alpha = torch.rand(5)
    inv_alpha = 1 / alpha
    scaled_y = (x * 10).round() * alpha.repeat_interleave(99).repeat(3).view_as(x)  # a packed conv's y * alpha
    for nhwc, scaled in ((0, 0), (1, 0), (0, 1), (1, 1)):
        results = []
        for lib in (_native.lib(), debug_lib):
            dy, da = torch.empty_like(x), torch.empty(5)
            y = scaled_y if scaled else x
            lib.scale_backward(2, (g.data_ptr(), y.data_ptr(), dy.data_ptr(), x.numel(), alpha.data_ptr(), da.data_ptr(),
                                   3, 5, 99, nhwc, inv_alpha.data_ptr() if scaled else 0))
            results.append((dy, da))
        for release, checked in zip(*results):
            assert torch.equal(release, checked)
