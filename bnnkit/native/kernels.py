"""The native kernels (csrc/, built by the package install as bnnkit.deploy._kernels): loading,
instruction-set choice, and checked wrappers.

Every wrapper validates the shapes, dtypes, memory layout and the largest index the kernel will
touch against the actual tensors before it passes raw addresses to native code, so a malformed
file or a wrong input raises DeployFormatError instead of reading out of bounds.

Instruction set: `BNNKIT_ISA=avx512|avx2|portable` forces one (an error if the CPU lacks it);
unset or `auto` picks the best the CPU supports.
"""
from __future__ import annotations

import contextlib
import copy
import functools
import importlib
import os
import threading
import warnings
from collections.abc import Iterator
from types import ModuleType
from typing import NamedTuple

import numpy as np
import torch

from ..errors import DeployFormatError
from .bits import unpack_signs

ISA_CODES = {"portable": 1, "avx2": 2, "avx512": 3}
_lib: ModuleType | None = None
_missing = False  # the import failed once: try_lib() does not retry it on every call
_scratch = threading.local()  # per-thread reusable tie buffers of pack()
_NO_TIES = torch.empty((0, 4), dtype=torch.int32)
_counted: list[int] | None = None  # the count_words() in force, if any


@contextlib.contextmanager
def count_words() -> Iterator[list[int]]:
    """Count the XOR-popcount steps of the binary convs run inside: one 64-bit word of one output
    channel at one output pixel, the work the kernel's inner loop cannot avoid (bnnkit bench
    compares it with the kernel's rate). Yields a one-element list that holds the count."""
    global _counted
    outer, _counted = _counted, [0]
    try:
        yield _counted
    finally:
        if outer is not None:
            outer[0] += _counted[0]
        _counted = outer


class _Profiled:
    """The kernels module with each call named in torch.profiler's tables (`bnnkit::bconv`,
    `bnnkit::act_forward`, ...) while a profiler runs: without it, time spent in the native
    kernels would show as no operator at all. Off the profiler a call costs one flag check."""

    def __init__(self, module: ModuleType) -> None:
        self.module = module

    def __getattr__(self, name: str):
        fn = getattr(self.module, name)
        if not callable(fn):
            return fn
        label = "bnnkit::" + name

        @functools.wraps(fn)
        def call(*args):
            if not torch._C._autograd._profiler_enabled():
                return fn(*args)
            with torch.profiler.record_function(label):
                return fn(*args)

        self.__dict__[name] = call  # found directly from now on
        return call


_profiled: _Profiled | None = None


def lib() -> _Profiled:
    global _lib, _profiled
    if _lib is None:
        try:
            _lib = importlib.import_module("bnnkit.native._ext")
        except ImportError as e:  # pragma: no cover - depends on the install
            raise ImportError("bnnkit's native deployment kernels are not built; reinstall with "
                              "`pip install -e .` or run `python setup.py build_ext --inplace`") from e
    if _profiled is None or _profiled.module is not _lib:
        _profiled = _Profiled(_lib)
    return _profiled


def try_lib() -> _Profiled | None:
    """lib(), or None where the kernels are not built: callers then take their PyTorch path."""
    global _missing
    if _lib is None and _missing:
        return None
    try:
        return lib()
    except ImportError:
        _missing = True
        return None


def set_library(module: ModuleType | None) -> ModuleType | None:
    """Use another build of the kernels (tests load the bounds-checked debug build); None restores
    the installed one. Returns the previous module."""
    global _lib
    old, _lib = _lib, module
    return old


def available_isas() -> list[str]:
    feats = lib().cpu_features()
    return ["portable"] + (["avx2"] if feats["avx2"] else []) + (["avx512"] if feats["avx512"] else [])


def resolve_isa(isa: str | None = None) -> str:
    """The instruction set to use: `isa`, else $BNNKIT_ISA, else the best available."""
    want = (isa or os.environ.get("BNNKIT_ISA") or "auto").lower()
    have = available_isas()
    if want == "auto":
        return have[-1]
    if want not in ISA_CODES:
        raise ValueError(f"unknown instruction set {want!r} (from isa= or BNNKIT_ISA); use one of auto, {', '.join(ISA_CODES)}")
    if want not in have:
        raise ValueError(f"instruction set {want!r} is not supported by this CPU; it supports {', '.join(have)}")
    return want


def is_channels_last(x: torch.Tensor) -> bool:
    """True when x is stored channels-last and not also in the default order (ambiguous shapes,
    e.g. C == 1, have one memory order for both): the layout PyTorch propagates from x."""
    return x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


def words(channels: int) -> int:
    return (channels + 63) // 64


def _need(cond: bool, msg: str) -> None:
    if not cond:
        raise DeployFormatError(msg)


def _check_tensor(t: torch.Tensor, dtype: torch.dtype, numel: int, what: str,
                  layout: torch.memory_format = torch.contiguous_format) -> None:
    if t.dtype == dtype and t.is_cpu and t.is_contiguous(memory_format=layout) and t.numel() == numel:
        return  # the common case, without formatting the messages below
    _need(t.dtype == dtype, f"{what}: dtype {t.dtype}, expected {dtype}")
    _need(t.device.type == "cpu", f"{what}: tensor on {t.device}, the runtime runs on CPU")
    _need(t.is_contiguous(memory_format=layout), f"{what}: not contiguous")
    _need(t.numel() == numel, f"{what}: {t.numel()} elements, expected {numel}")


class _PackPlan(NamedTuple):
    convert: bool  # x is not read in place: a channels-last float32 copy is packed
    out_shape: tuple[int, int, int, int]
    N: int
    per: int  # values a sample
    args: list[int]  # the native call's arguments, 0 where pack() fills in a tensor's address


_pack_plans: dict[tuple, _PackPlan] = {}


def _pack_plan(x: torch.Tensor, groups: int, pad: tuple[int, int], mode: int, isa: str, key: tuple) -> _PackPlan:
    """What pack() needs to know about an input of x's shape, memory layout and dtype, checked once."""
    _need(x.dim() == 4, f"binary conv input: expected 4 dimensions, got shape {tuple(x.shape)}")
    _need(x.device.type == "cpu", f"binary conv input: tensor on {x.device}, the runtime runs on CPU")
    N, C, H, W = x.shape
    _need(groups >= 1 and C % groups == 0, f"binary conv input: {C} channels not divisible into {groups} groups")
    _need(pad[0] >= 0 and pad[1] >= 0, "negative padding")
    _need(isa in ISA_CODES, f"unknown instruction set {isa!r}")
    nchw = x.dtype == torch.float32 and x.is_contiguous() and not x.is_contiguous(memory_format=torch.channels_last)
    convert = not nchw and not (x.dtype == torch.float32 and x.is_contiguous(memory_format=torch.channels_last))
    Cg = C // groups
    Cw = words(Cg)
    out_shape = (N, H + 2 * pad[0], W + 2 * pad[1], groups * Cw)
    args = [0, N * C * H * W, N, H, W, C, groups, Cg, Cw, pad[0], pad[1], mode,
            0, out_shape[0] * out_shape[1] * out_shape[2] * out_shape[3], 0, N, 0, 0, 0, 0, int(nchw)]
    plan = _PackPlan(convert, out_shape, N, C * H * W, args)
    if len(_pack_plans) >= 64:
        _pack_plans.clear()
    _pack_plans[key] = plan
    return plan


# PyTorch sums a tensor on one thread below this many elements (ATen's GRAIN_SIZE)
_TORCH_SERIAL_NUMEL = 32768
_torch_sum_checked: dict[str, bool] = {}


def _native_torch_mean_ok(x: torch.Tensor, plan: _PackPlan, mode: int, isa: str) -> bool:
    """Whether pack's native copy of PyTorch's summation order gives the mean PyTorch takes to the
    last bit: x float32 and read in place (mode 3: PyTorch sums it in its memory order; mode 4:
    x channels-last, PyTorch sums its NCHW copy), at least 8 values a sample, summed by PyTorch
    on one thread, and the copy checked against this PyTorch."""
    if plan.convert or x.dtype != torch.float32 or plan.per < 8 or (mode == 4 and plan.args[20]):
        return False
    if x.numel() >= _TORCH_SERIAL_NUMEL and torch.get_num_threads() != 1:
        return False  # PyTorch would split the sum between threads
    ok = _torch_sum_checked.get(isa)
    if ok is None:
        ok = _torch_sum_checked[isa] = _check_torch_order_sum(isa)
    return ok


def _check_torch_order_sum(isa: str) -> bool:
    """The native PyTorch-order means against torch.mean on probes PyTorch sums serially (under
    32768 values), both layouts and both orders: every level of the cascade the probes reach, and
    the tails."""
    gen = torch.Generator().manual_seed(0)
    for shape in ((1, 1, 2, 4), (2, 3, 5, 7), (3, 37, 13, 17), (1, 127, 16, 16), (1, 9, 60, 60)):
        x = torch.randn(shape, generator=gen) * 3 + 0.2
        for layout, mode, want in ((torch.contiguous_format, 3, x), (torch.channels_last, 3, x),
                                   (torch.channels_last, 4, x.contiguous())):
            xl = x.contiguous(memory_format=layout)
            if mode == 4 and xl.is_contiguous():
                continue  # one memory order for both layouts
            key = (xl.shape, xl.stride(), xl.dtype, xl.is_cpu, 1, (0, 0), mode, isa)
            _, thr, _ = _pack(xl, _pack_plans.get(key) or _pack_plan(xl, 1, (0, 0), mode, isa, key), isa, 1, None)
            if not torch.equal(thr, want.contiguous(memory_format=layout if mode == 3 else torch.contiguous_format)
                               .mean(dim=(1, 2, 3))):
                warnings.warn("bnnkit: this PyTorch does not sum in the order bnnkit's kernels copy; SiMaN's "
                              "per-sample means are left to PyTorch (exact, a little slower)", RuntimeWarning)
                return False
    return True


def pack(x: torch.Tensor, *, groups: int, pad: tuple[int, int], center: bool, isa: str,
         threads: int, thresholds: torch.Tensor | None = None, torch_mean: bool = False,
         mean_layout: torch.memory_format | None = None,
         return_thresholds: bool = True) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Binarize x (N,C,H,W float32; read in place when NCHW- or channels-last-contiguous) to bits and pack them:
    int64 [N, H+2ph, W+2pw, groups*Cw] with a zero (+1) border; bit = x < t where t is 0, or the
    per-sample mean over (C,H,W) when `center`: the given float32 `thresholds` [N]; else with
    `torch_mean`, x.contiguous(memory_format=mean_layout).mean(dim=(1, 2, 3)) to the last bit
    (mean_layout None: x as stored; natively in PyTorch's order where that is known to match,
    else by PyTorch); else computed natively in double precision. Returns the bits, the
    thresholds t [N] (None unless `return_thresholds`, which saves allocating them) and the ties:
    int32 [Z, 4] rows (n, y, x, c) of the activations exactly equal to t, which sign() maps to 0
    and the bits to +1 (the conv removes their contribution, see PackedConv)."""
    if type(pad) is not tuple:
        pad = tuple(pad)
    mode = (2 if thresholds is not None else 3 if torch_mean else 1) if center else 0
    if mode == 3 and mean_layout is not None and not x.is_contiguous(memory_format=mean_layout):
        mode = 4 if mean_layout == torch.contiguous_format else 5  # 5: only PyTorch's, below
    # shape, strides, dtype and device decide everything the checks look at
    key = (x.shape, x.stride(), x.dtype, x.is_cpu, groups, pad, mode, isa)
    plan = _pack_plans.get(key)
    if plan is None:
        plan = _pack_plan(x, groups, pad, mode, isa, key)
    if mode >= 3 and not (mode < 5 and _native_torch_mean_ok(x, plan, mode, isa)):
        mean = (x if mode == 3 else x.contiguous(memory_format=mean_layout)).mean(dim=(1, 2, 3))
        return pack(x, groups=groups, pad=pad, center=True, isa=isa, threads=threads, thresholds=mean,
                    return_thresholds=return_thresholds)
    return _pack(x, plan, isa, threads, thresholds, return_thresholds)


def _pack(x: torch.Tensor, plan: _PackPlan, isa: str, threads: int, thresholds: torch.Tensor | None,
          return_thresholds: bool = True) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    if plan.convert:
        x = x.float().contiguous(memory_format=torch.channels_last)
    out = torch.empty(plan.out_shape, dtype=torch.int64)
    if return_thresholds:
        thr = torch.empty(plan.N, dtype=torch.float32)
    else:  # written by the kernel, read by no one: a reused buffer
        thr = getattr(_scratch, "thr", None)
        if thr is None or thr.numel() < plan.N:
            thr = _scratch.thr = torch.empty(max(plan.N, 64), dtype=torch.float32)
    args = plan.args.copy()
    if thresholds is not None:
        thr_in = thresholds
        if not (thr_in.dtype == torch.float32 and thr_in.dim() == 1 and thr_in.is_contiguous()):
            thr_in = thr_in.detach().to(torch.float32).reshape(-1).contiguous()
        _check_tensor(thr_in, torch.float32, plan.N, "pack thresholds")
        args[16] = thr_in.data_ptr()
    if not hasattr(_scratch, "ties"):
        _scratch.count = torch.zeros(1, dtype=torch.int64)
        _scratch.ties = torch.empty((1024, 4), dtype=torch.int32)
    count, ties = _scratch.count, _scratch.ties
    args[0], args[12], args[14], args[19] = x.data_ptr(), out.data_ptr(), thr.data_ptr(), count.data_ptr()
    while True:
        cap = ties.shape[0]
        args[17], args[18] = ties.data_ptr(), cap
        lib().pack(ISA_CODES[isa], threads, args)
        found = count.item()
        if found <= cap:
            return out, (thr if return_thresholds else None), (ties[:found].clone() if found else _NO_TIES)
        ties = _scratch.ties = torch.empty((found, 4), dtype=torch.int32)  # rare: room for all, pack again


def pack_weight_signs(weight: torch.Tensor, threads: int) -> torch.Tensor | None:
    """float32 CPU weights [O, Cg, KH, KW] that are exactly +1 or -1 -> their packed signs int64
    [O, KH*KW, Cw] (bit 1 = -1, as _bits.pack_signs), in one native pass that also checks the
    values; None when any value is not exactly ±1 (0, -0.0, a scale, NaN)."""
    _need(weight.dim() == 4 and weight.dtype == torch.float32 and weight.device.type == "cpu",
          "pack_weight_signs takes float32 CPU weights [O, Cg, KH, KW]")
    O, Cg, KH, KW = weight.shape
    so, sc, sh, sw = weight.stride()
    if sh != KW * sw or min(weight.stride()) < 0:  # (kh, kw) must flatten to one stride
        weight = weight.contiguous()
        so, sc, sh, sw = weight.stride()
    Cw, K = words(Cg), KH * KW
    out = torch.empty((O, K, Cw), dtype=torch.int64)
    bad = torch.empty(O, dtype=torch.int64)
    lib().pack_weights(threads, (weight.data_ptr(), weight.untyped_storage().nbytes() // 4 - weight.storage_offset(),
                                 O, Cg, K, Cw, so, sc, sw, out.data_ptr(), out.numel(), bad.data_ptr()))
    return None if bool(bad.any()) else out


def epilogue_constants(prescale: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor) -> tuple[torch.Tensor, ...]:
    return (prescale.float().view(1, -1, 1, 1).clone(), scale.double().view(1, -1, 1, 1).clone(),
            bias.double().view(1, -1, 1, 1).clone())


def epilogue(dots: torch.Tensor, prescale: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """fma(dots * prescale, scale, bias) in PyTorch ops, constants from epilogue_constants. fma is
    emulated in float64: the product is exact there and the sum rounds twice, which differs from a
    single rounding only for a sum within 2^-29 of a float32 rounding midpoint."""
    return torch.addcmul(bias, (dots * prescale).double(), scale).float()


class Nonlinearity:
    """A nonlinearity the binary conv applies to its results last (after a residual), with
    PyTorch's CPU formula, so the bits equal the module's: PReLU v > 0 ? v : slope * v (one slope
    per output channel), Hardtanh v < lo ? lo : v > hi ? hi : v (NaN and -0.0 pass through)."""

    __slots__ = ("kind", "params")

    def __init__(self, kind: int, params: torch.Tensor) -> None:
        self.kind, self.params = kind, params.detach().to(torch.float32).contiguous()

    @classmethod
    def prelu(cls, slopes: torch.Tensor, channels: int) -> "Nonlinearity":
        _need(slopes.numel() in (1, channels), f"PReLU with {slopes.numel()} slopes for {channels} channels")
        return cls(1, slopes.detach().reshape(-1).expand(channels))

    @classmethod
    def hardtanh(cls, lo: float, hi: float) -> "Nonlinearity":
        return cls(2, torch.tensor([lo, hi], dtype=torch.float32))


def bn_act_max_pool(x: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor, nonlinearity: Nonlinearity | None,
                    kernel: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int],
                    threads: int) -> torch.Tensor:
    """max_pool2d(act(fma(x, scale, bias)), kernel, stride, padding) of a float32 CPU tensor x
    (NCHW- or channels-last-contiguous), channels-last out, in one pass: a ResNet stem's eval-mode
    BatchNorm (scale, bias from _affine.bn_affine), activation and max pooling, with the same bits
    as the three PyTorch calls (each an exact per-element or max operation; PyTorch's batch_norm
    rounds other strides another way, so they are refused). At ImageNet batch 32 the three passes
    over a 102 MB tensor took 140 ms, a third of the packed network."""
    _need(x.dim() == 4 and x.dtype == torch.float32 and x.is_cpu, "bn_act_max_pool takes a float32 CPU tensor [N, C, H, W]")
    N, C, H, W = x.shape
    in_nchw = int(not x.is_contiguous(memory_format=torch.channels_last))
    _need(not in_nchw or x.is_contiguous(), "bn_act_max_pool takes an NCHW- or channels-last-contiguous tensor")
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    _need(min(kh, kw, sh, sw) >= 1 and 0 <= 2 * ph <= kh and 0 <= 2 * pw <= kw,
          f"max pooling {kernel}/{stride} with padding {padding}")
    Ho, Wo = (H + 2 * ph - kh) // sh + 1, (W + 2 * pw - kw) // sw + 1
    _need(Ho >= 1 and Wo >= 1, f"max pooling {kernel}/{stride} of a {H}x{W} input")
    consts = [t.detach().to(torch.float32).reshape(-1).contiguous() for t in (scale, bias)]
    _need(all(t.numel() == C for t in consts), f"bn_act_max_pool: {C} channels need {C} constants")
    nl = nonlinearity
    _need(nl is None or nl.kind == 2 or nl.params.numel() == C, f"bn_act_max_pool: PReLU slopes for {C} channels")
    params = None if nl is None else nl.params.contiguous()
    out = torch.empty((N, C, Ho, Wo), dtype=torch.float32, memory_format=torch.channels_last)
    lib().bn_pool(threads, (x.data_ptr(), x.numel(), out.data_ptr(), out.numel(), N, C, H, W, Ho, Wo, kh, kw, sh, sw,
                            ph, pw, in_nchw, consts[0].data_ptr(), consts[1].data_ptr(), 0 if nl is None else nl.kind,
                            0 if params is None else params.data_ptr(), 0 if params is None else params.numel()))
    return out


def max_pool_to_nchw(x: torch.Tensor, kernel: tuple[int, int], stride: tuple[int, int], threads: int,
                     scale: torch.Tensor | None = None, bias: torch.Tensor | None = None,
                     nonlinearity: Nonlinearity | None = None) -> torch.Tensor:
    """nonlinearity(fma(max_pool2d(x), scale, bias)) of a channels-last float32 CPU tensor, written
    NCHW in one pass: the maximum over each window (no padding, dilation 1, floor mode) as
    PyTorch's max_pool2d picks it (NaN wins, then the first of equal values), then the
    per-channel fma of an eval-mode BatchNorm (_affine.bn_affine) when scale and bias are given,
    then a PReLU or Hardtanh. The same bits as the three PyTorch calls."""
    _need(x.dim() == 4 and x.dtype == torch.float32 and x.device.type == "cpu"
          and x.is_contiguous(memory_format=torch.channels_last), "max_pool_to_nchw takes a channels-last float32 CPU tensor [N, C, H, W]")
    N, C, H, W = x.shape
    (kh, kw), (sh, sw) = kernel, stride
    _need(min(kh, kw, sh, sw) >= 1 and H >= kh and W >= kw, f"max pooling {kernel}/{stride} of a {H}x{W} input")
    Ho, Wo = (H - kh) // sh + 1, (W - kw) // sw + 1
    _need((scale is None) == (bias is None), "max_pool_to_nchw: scale and bias go together")
    consts = [None if t is None else t.detach().to(torch.float32).reshape(-1).contiguous() for t in (scale, bias)]
    _need(all(t is None or t.numel() == C for t in consts), f"max_pool_to_nchw: {C} channels need {C} constants")
    nl = nonlinearity
    _need(nl is None or nl.kind == 2 or nl.params.numel() == C, f"max_pool_to_nchw: PReLU slopes for {C} channels")
    params = None if nl is None else nl.params.contiguous()
    out = torch.empty((N, C, Ho, Wo), dtype=torch.float32)
    lib().pool(threads, (x.data_ptr(), x.numel(), out.data_ptr(), out.numel(), N, C, H, W, Ho, Wo, kh, kw, sh, sw,
                         0 if consts[0] is None else consts[0].data_ptr(), 0 if consts[1] is None else consts[1].data_ptr(),
                         0 if nl is None else nl.kind, 0 if params is None else params.data_ptr(),
                         0 if params is None else params.numel()))
    return out


class PackedConv:
    """A binary convolution in the kernel's layout, built from the file's weights [O, KH*KW, Cw].

    w_bits: int64 [O, K, Cw]; prescale, scale, bias: float32 [O]. The output is
    fma(dot * prescale, scale, bias), rounded as PyTorch rounds the model's `conv * alpha`
    followed by its eval-mode BatchNorm (x * a + b with one rounding, see _affine.bn_affine)."""

    def __init__(self, w_bits: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor, *, in_channels: int,
                 kernel: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int],
                 dilation: tuple[int, int], groups: int, prescale: torch.Tensor | None = None) -> None:
        O, K, Cw = w_bits.shape
        G = groups
        _need(G >= 1 and O % G == 0 and in_channels % G == 0, f"binary conv: channels {in_channels}->{O} not divisible by groups {G}")
        _need(kernel[0] >= 1 and kernel[1] >= 1 and K == kernel[0] * kernel[1], f"binary conv: {K} kernel positions for a {kernel} kernel")
        _need(min(stride) >= 1 and min(dilation) >= 1 and min(padding) >= 0, "binary conv: stride/dilation must be >= 1 and padding >= 0")
        Cg, Og = in_channels // G, O // G
        _need(Cw == words(Cg), f"binary conv: {Cw} words per position for {Cg} channels per group, expected {words(Cg)}")
        self.in_channels, self.out_channels, self.groups = in_channels, O, G
        self.Cg, self.Og, self.Cw, self.K = Cg, Og, Cw, K
        self.kernel, self.stride, self.padding, self.dilation = (tuple(int(v) for v in t) for t in (kernel, stride, padding, dilation))
        self.geometry = (in_channels, self.kernel, self.stride, self.padding, self.dilation, G)
        self.OBg = (Og + 7) // 8
        self._set_epilogue(prescale, scale, bias)
        self._set_weights(w_bits)

    def _set_weights(self, w_bits: torch.Tensor) -> None:
        """The kernel's weight buffers for w_bits [O, K, Cw], in numpy: the training forward
        builds them anew whenever a step changed a layer's signs, and torch's per-op overhead
        (about 20 small ops) made that 1 ms a conv."""
        G, Og, OBg, K, Cw, Cg = self.groups, self.Og, self.OBg, self.K, self.Cw, self.Cg
        _need(tuple(w_bits.shape) == (G * Og, K, Cw), f"binary conv: weights of shape {tuple(w_bits.shape)}, "
                                                      f"expected {(G * Og, K, Cw)}")
        w = np.zeros((G, OBg * 8, K, Cw), dtype=np.int64)
        w[:, :Og] = w_bits.to(torch.int64).reshape(G, Og, K, Cw).numpy()
        self.wk = torch.from_numpy(np.ascontiguousarray(w.reshape(G, OBg, 8, K, Cw).transpose(0, 1, 3, 4, 2)))
        corr = (Cg - 2 * _bit_count(w).sum(-1)).astype(np.int32)  # [G, OBg*8, K]: Cg - 2 x (number of -1 weights)
        corr[:, Og:] = 0
        self.corr = torch.from_numpy(np.ascontiguousarray(corr.reshape(G, OBg, 8, K).transpose(0, 1, 3, 2)))
        self._taps_setup(w_bits)
        self.w_bits, self._tie_w = w_bits, None
        self._borders: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        self._plans: dict[tuple, _ConvPlan] = {}
        # the kernel's constant buffers are built here and never change: check them once
        _check_tensor(self.wk, torch.int64, G * OBg * K * Cw * 8, "kernel weights")
        _check_tensor(self.corr, torch.int32, G * OBg * K * 8, "kernel corrections")

    def _set_epilogue(self, prescale: torch.Tensor | None, scale: torch.Tensor, bias: torch.Tensor) -> None:
        O, G, Og = self.out_channels, self.groups, self.Og
        prescale = torch.ones(O) if prescale is None else prescale
        _need(scale.shape == (O,) and bias.shape == (O,) and prescale.shape == (O,),
              "binary conv: prescale/scale/bias must have one value per output channel")
        self.pre, self.scale, self.bias = (self._padded(t.reshape(G, Og)) for t in (prescale, scale, bias))
        self._affine = None  # epilogue_constants, for finish(): built on first use
        self._plans = {}  # they hold the constants' addresses
        for t, what in ((self.pre, "prescale"), (self.scale, "scale"), (self.bias, "bias")):
            _check_tensor(t, torch.float32, G * self.OBg * 8, f"kernel {what}")

    def with_epilogue(self, scale: torch.Tensor, bias: torch.Tensor, prescale: torch.Tensor | None = None) -> "PackedConv":
        """The same packed weights with other per-channel constants: a trained model's new scale
        and BatchNorm statistics without re-packing weights whose signs did not change."""
        other = copy.copy(self)
        other._set_epilogue(prescale, scale, bias)
        return other

    def with_weights(self, w_bits: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor,
                     prescale: torch.Tensor | None = None) -> "PackedConv":
        """This conv's geometry with other packed weights and constants (a training step's)."""
        other = copy.copy(self)
        other._set_epilogue(prescale, scale, bias)
        other._set_weights(w_bits)
        return other

    def _taps_setup(self, w_bits: torch.Tensor) -> None:
        """A narrow layer (up to 32 channels in one group) fills a 64-bit word with one pixel's
        channels only partly: its kernel row's taps are packed side by side instead, `per` taps a
        word (as many as fit, at most KW), so that the row takes tap_words = ceil(KW / per) words,
        and the conv runs as a KH x 1 conv over those words with the same integer dot products.
        A 3x3 conv of up to 21 channels takes 3 words per output instead of 9; of 22-32 channels,
        6 (ResNet-20's 32-channel convs inside its forward at batch 256, the taps pass included:
        median 5.4 -> 5.0 ms a conv)."""
        self.tap_words = 0
        kh, kw = self.kernel
        per = min(kw, 64 // self.Cg)
        if self.groups != 1 or per < 2:
            return
        self.taps_per_word, self.tap_words = per, -(-kw // per)
        w = w_bits.reshape(self.out_channels, kh, kw).numpy().view(np.uint64)
        taps = np.zeros((self.OBg * 8, kh, self.tap_words), dtype=np.uint64)
        for kx in range(kw):
            taps[:self.out_channels, :, kx // per] |= w[:, :, kx] << np.uint64(kx % per * self.Cg)
        taps = taps.view(np.int64).reshape(1, self.OBg, 8, kh, self.tap_words).transpose(0, 1, 3, 4, 2)
        self.wk_taps = torch.from_numpy(np.ascontiguousarray(taps))
        _check_tensor(self.wk_taps, torch.int64, self.OBg * kh * self.tap_words * 8, "kernel tap weights")

    def _tap_packed(self, packed: torch.Tensor, threads: int) -> torch.Tensor:
        """[N, Hp, Wp, 1] words of Cg bits -> [N, Hp, Wp - (KW-1)*dw, tap_words]: word j of column x
        holds columns x + kx*dw, kx = j*per + p < KW, at bits p*Cg."""
        kw, dw = self.kernel[1], self.dilation[1]
        N, Hp, Wp, _ = packed.shape
        out = torch.empty((N, Hp, Wp - (kw - 1) * dw, self.tap_words), dtype=torch.int64)
        lib().taps(ISA_CODES["portable"], threads, (packed.data_ptr(), packed.numel(), N, Hp, Wp, kw, dw, self.Cg,
                                                    self.taps_per_word, out.data_ptr(), out.numel()))
        return out

    def _tie_weights(self) -> torch.Tensor:
        """The weight signs the kernel subtracts for a tie: int8 [G, OBg, K, Cg, 8], 0 in padding
        channels. Built on the first input with ties (trained networks rarely have any)."""
        if self._tie_w is None:
            G, Og, OBg, K, Cg = self.groups, self.Og, self.OBg, self.K, self.Cg
            signs = unpack_signs(self.w_bits, Cg, self.kernel).to(torch.int8)  # [O, Cg, KH, KW]
            signs = signs.reshape(G, Og, Cg, K)
            signs = torch.cat([signs, signs.new_zeros(G, OBg * 8 - Og, Cg, K)], 1) if OBg * 8 != Og else signs
            self._tie_w = signs.reshape(G, OBg, 8, Cg, K).permute(0, 1, 4, 3, 2).contiguous()
            _check_tensor(self._tie_w, torch.int8, G * OBg * K * Cg * 8, "tie weights")
        return self._tie_w

    def _padded(self, t: torch.Tensor) -> torch.Tensor:
        """[G, Og] -> the kernel's [G, OBg*8] float32 (a copy), zero in the channels that pad a block of 8."""
        if self.OBg * 8 == self.Og:
            return t.to(torch.float32, memory_format=torch.contiguous_format, copy=True)
        out = torch.zeros(self.groups, self.OBg * 8, dtype=torch.float32)
        out[:, :self.Og] = t
        return out

    def _raw_constants(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(ones, zeros) in the kernel's layout: the epilogue of raw=True outputs."""
        if not hasattr(self, "_raw"):
            self._raw = (self._padded(torch.ones(self.groups, self.Og)), self._padded(torch.zeros(self.groups, self.Og)))
        return self._raw

    def finish(self, dots: torch.Tensor) -> torch.Tensor:
        """The epilogue, applied to raw dot products (an output of __call__ with raw=True)."""
        if self._affine is None:
            O = self.out_channels
            self._affine = epilogue_constants(*(t[:, :self.Og].reshape(O) for t in (self.pre, self.scale, self.bias)))
        return epilogue(dots, *self._affine)

    def borders(self, H: int, W: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The zero-padding corrections for an H x W input: (row classes int32 [Ho], column classes
        int32 [Wo], table int32 [R, C, G, OBg, 8]). Output pixels whose windows leave the input at
        the same kernel rows and columns share a class; the table holds what their padded (+1)
        positions add to the dot product, zero for a window inside the input."""
        key = (H, W)
        if key not in self._borders:
            row_cls, col_cls, outside = _border_classes(H, W, self.kernel, self.stride, self.padding, self.dilation)
            R, C = outside.shape[:2]
            corr = self.corr.numpy().transpose(2, 0, 1, 3).reshape(self.K, -1)  # [K, G*OBg*8]
            table = (outside.reshape(R * C, self.K) @ corr).astype(np.int32)
            table = torch.from_numpy(np.ascontiguousarray(table.reshape(R, C, self.groups, self.OBg, 8)))
            if len(self._borders) >= 16:
                self._borders.clear()
            self._borders[key] = (row_cls, col_cls, table)
        return self._borders[key]

    def out_size(self, H: int, W: int) -> tuple[int, int]:
        return _out_size(H, W, self.kernel, self.stride, self.padding, self.dilation)

    def _plan(self, shape: torch.Size, H: int, W: int, bpad: tuple[int, int], isa: str, raw: bool,
              nchw: bool) -> "_ConvPlan":
        """Everything about a call that follows from the packed input's shape and the options, checked
        once: the output's shape and the native call's arguments except the per-call tensors (about
        5 us of the wrapper's Python, 5 % of a 100 us conv, saved on every later call)."""
        _need(len(shape) == 4, "packed activations must be 4-d")
        N, Hp, Wp, PW = shape
        _need(bpad[0] >= self.padding[0] and bpad[1] >= self.padding[1], "packed activations have less padding than the conv")
        _need(Hp == H + 2 * bpad[0] and Wp == W + 2 * bpad[1] and PW == self.groups * self.Cw,
              f"packed activations of shape {tuple(shape)} do not match this conv")
        Ho, Wo = self.out_size(H, W)
        _need(Ho >= 1 and Wo >= 1, f"binary conv: input {H}x{W} is smaller than its kernel")
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = self.kernel, self.stride, self.padding, self.dilation
        # the last row/column the kernel reads, in the padded buffer
        _need((Ho - 1) * sh - ph + (kh - 1) * dh + bpad[0] < Hp and (Wo - 1) * sw - pw + (kw - 1) * dw + bpad[1] < Wp,
              "binary conv would read past its input")
        _need(isa in ISA_CODES, f"unknown instruction set {isa!r}")
        row_cls, col_cls, table = self.borders(H, W)
        wk, Cg, Cw, numel = self.wk, self.Cg, self.Cw, N * Hp * Wp * PW
        if self.tap_words:  # the kernel then runs a KH x 1 conv over the tap words (see _taps_setup)
            wk, Cg, Cw, Wp, kw, dw = self.wk_taps, kw * self.Cg, self.tap_words, Wp - (kw - 1) * dw, 1, 1
            numel = N * Hp * Wp * Cw
        ones, zeros = self._raw_constants() if raw else (None, None)
        O = self.out_channels
        out_numel = N * O * Ho * Wo
        args = [0, numel, N, H, W, Hp, Wp, bpad[0], bpad[1],
                self.groups, Cg, Cw, self.Og, self.OBg, kh, kw, sh, sw, ph, pw, dh, dw, Ho, Wo,
                wk.data_ptr(), wk.numel(), table.data_ptr(), table.numel(),
                (ones if raw else self.scale).data_ptr(), (zeros if raw else self.bias).data_ptr(),
                self.scale.numel(), 0, out_numel, 0, 0,
                (ones if raw else self.pre).data_ptr(), int(nchw),
                row_cls.data_ptr(), col_cls.data_ptr(), table.shape[1],
                0, 0, self.kernel[1], self.dilation[1], self.Cg, 0, 0, 0, 0, 0]
        words_ = N * Ho * Wo * self.groups * self.OBg * 8 * kh * kw * Cw
        # the plan holds the tensors whose addresses it holds: they live as long as it does
        keep = (wk, table, row_cls, col_cls, ones, zeros)
        plan = _ConvPlan((N, O, Ho, Wo), numel, out_numel, ISA_CODES[isa], args, words_, keep)
        if len(self._plans) >= 16:
            self._plans.clear()
        self._plans[(shape, H, W, bpad, isa, raw, nchw)] = plan
        return plan

    def __call__(self, packed: torch.Tensor, H: int, W: int, bpad: tuple[int, int], *, isa: str, threads: int,
                 ties: torch.Tensor | None = None, raw: bool = False, nchw: bool = False,
                 residual: torch.Tensor | None = None, nonlinearity: Nonlinearity | None = None) -> torch.Tensor:
        """packed, ties: outputs of pack() for an input of spatial size H x W with padding bpad.
        raw: return the exact integer dot products (as float32) without the epilogue.
        nchw: return a tensor in PyTorch's default layout instead of channels_last.
        residual: a float32 tensor of the output's shape and layout, added to the epilogue's result
        (one float32 rounding, as `epilogue + residual` in PyTorch).
        nonlinearity: applied last, to each result, with PyTorch's formula (see Nonlinearity)."""
        if type(bpad) is not tuple:
            bpad = tuple(bpad)
        shape = packed.shape
        plan = self._plans.get((shape, H, W, bpad, isa, raw, nchw))
        if plan is None:
            plan = self._plan(shape, H, W, bpad, isa, raw, nchw)
        _check_tensor(packed, torch.int64, shape.numel(), "packed activations")
        layout = torch.contiguous_format if nchw else torch.channels_last
        out = torch.empty(plan.out_shape, dtype=torch.float32, memory_format=layout)
        args = plan.args.copy()
        if residual is not None:
            _need(not raw, "a residual is added after the epilogue, which raw outputs skip")
            _need(residual.shape == plan.out_shape and residual.is_contiguous(memory_format=layout),
                  f"residual of shape {tuple(residual.shape)} and strides {residual.stride()} is not stored as the "
                  f"conv's output {plan.out_shape} ({'NCHW' if nchw else 'channels_last'})")
            _need(residual.dtype == torch.float32 and residual.device.type == "cpu", "residual must be float32 on CPU")
            args[45], args[46] = residual.data_ptr(), plan.out_numel
        if nonlinearity is not None:
            _need(not raw, "a nonlinearity is applied after the epilogue, which raw outputs skip")
            kind, params = nonlinearity.kind, nonlinearity.params
            _check_tensor(params, torch.float32, self.out_channels if kind == 1 else 2, "nonlinearity parameters")
            args[47], args[48], args[49] = kind, params.data_ptr(), params.numel()
        # inputs exactly at their threshold are removed from the integer dot products, tile by tile
        # (the native side checks that each lies inside the input, and sorts them by input row)
        if ties is not None and ties.numel():
            _need(ties.dim() == 2 and ties.shape[1] == 4, "ties must be rows of (n, y, x, c)")
            tie_w, nties = self._tie_weights(), ties.shape[0]
            _check_tensor(ties, torch.int32, nties * 4, "ties")
            args[33], args[34], args[40], args[41] = ties.data_ptr(), nties, tie_w.data_ptr(), tie_w.numel()
        if self.tap_words:
            packed = self._tap_packed(packed, threads)
            _check_tensor(packed, torch.int64, plan.numel, "tap-packed activations")
        args[0], args[31] = packed.data_ptr(), out.data_ptr()
        if _counted is not None:
            _counted[0] += plan.words
        lib().bconv(plan.isa, threads, args)
        return out


class _ConvPlan(NamedTuple):
    out_shape: tuple[int, int, int, int]
    numel: int  # of the activations the kernel reads (tap-packed ones for a narrow layer)
    out_numel: int
    isa: int
    args: list[int]  # the native call's arguments, 0 where __call__ fills in a tensor's address
    words: int  # for count_words()
    keep: tuple


def _out_size(H: int, W: int, kernel: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int],
              dilation: tuple[int, int]) -> tuple[int, int]:
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel, stride, padding, dilation
    return (H + 2 * ph - dh * (kh - 1) - 1) // sh + 1, (W + 2 * pw - dw * (kw - 1) - 1) // sw + 1


@functools.lru_cache(maxsize=256)
def _border_classes(H: int, W: int, kernel: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int],
                    dilation: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """The geometry of PackedConv.borders, shared by every conv of this shape (the packed eval
    path rebuilds its convs whenever training changed their weights): row classes int32 [Ho],
    column classes int32 [Wo], and int32 [R, C, kh, kw], 1 where a class's window is outside.
    The kernel's indices into the table are checked here, once per geometry."""
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel, stride, padding, dilation
    Ho, Wo = _out_size(H, W, kernel, stride, padding, dilation)
    iy = torch.arange(Ho)[:, None] * sh - ph + torch.arange(kh)[None] * dh
    ix = torch.arange(Wo)[:, None] * sw - pw + torch.arange(kw)[None] * dw
    rows, row_cls = torch.unique((iy >= 0) & (iy < H), dim=0, return_inverse=True)
    cols, col_cls = torch.unique((ix >= 0) & (ix < W), dim=0, return_inverse=True)
    outside = ~(rows[:, None, :, None] & cols[None, :, None, :])
    row_cls, col_cls = row_cls.to(torch.int32).contiguous(), col_cls.to(torch.int32).contiguous()
    _check_tensor(row_cls, torch.int32, Ho, "row classes")
    _check_tensor(col_cls, torch.int32, Wo, "column classes")
    R, C = outside.shape[:2]
    _need(0 <= int(row_cls.min()) and int(row_cls.max()) < R and 0 <= int(col_cls.min())
          and int(col_cls.max()) < C, "border classes outside their table")
    return row_cls, col_cls, outside.numpy().astype(np.int32)


def _bit_count(words_: np.ndarray) -> np.ndarray:
    """Number of set bits of each int64 word, as int64."""
    x = np.ascontiguousarray(words_).view(np.uint64)
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(x).astype(np.int64)
    x = x - ((x >> np.uint64(1)) & np.uint64(0x5555555555555555))
    x = (x & np.uint64(0x3333333333333333)) + ((x >> np.uint64(2)) & np.uint64(0x3333333333333333))
    x = (x + (x >> np.uint64(4))) & np.uint64(0x0F0F0F0F0F0F0F0F)
    return ((x * np.uint64(0x0101010101010101)) >> np.uint64(56)).astype(np.int64)
