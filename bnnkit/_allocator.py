"""Let the process reuse freed large tensors instead of returning their pages to the OS.

glibc serves allocations above its mmap threshold (dynamically between 128 KiB and 32 MiB) with
fresh mmap'd pages, which the kernel zeroes on first touch. A CPU forward pass that allocates a
new 16 MB activation for each op then spends more time in page faults than in arithmetic
(measured here: an eval-mode BatchNorm of 256x16x32x32 took 3.2 ms per call, 1.2 ms with the
thresholds raised). Raising the mmap and trim thresholds keeps such blocks in the heap for reuse;
this is what PyTorch's CPU performance guide achieves by preloading jemalloc or tcmalloc.

32 MiB is as high as glibc lets the threshold go, and the CIFAR recipes' batch of 256 makes
ResNet-18's and VGG-small's activations 64 MB: those were still mapped afresh for every op. So
tune() also turns mmap off for the heap (M_MMAP_MAX = 0; a thread's arena still maps what it
cannot hold). ResNet-18 (CIFAR) SiMaN training steps at batch 256 (benchmarks/allocator.py):
5.78 s untuned -> 3.61 s; resident memory 2.1 -> 4.7 GB, since the heap keeps what it grew to
(it levelled off at 5.1 GB within 52 steps of a 120-step run). The `bnnkit` command calls
tune() at start-up; BNNKIT_MALLOC_TUNE=0 turns it off.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_MMAP_MAX = -1, -3, -4  # glibc's mallopt parameter numbers
_MMAP_THRESHOLD_MAX = 32 << 20                                   # glibc's ceiling for 64-bit processes
_TRIM_THRESHOLD = 1 << 30


def tune() -> bool:
    """Raise glibc's mmap and trim thresholds and keep large blocks in the heap; True if applied
    (glibc on Linux only)."""
    if os.environ.get("BNNKIT_MALLOC_TUNE", "1") == "0" or platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return all(bool(libc.mallopt(param, value)) for param, value in (
            (_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX), (_M_TRIM_THRESHOLD, _TRIM_THRESHOLD), (_M_MMAP_MAX, 0)))
    except (OSError, AttributeError):
        return False
