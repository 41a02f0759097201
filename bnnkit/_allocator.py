"""Let the process reuse freed large tensors instead of returning their pages to the OS.

glibc serves allocations above its mmap threshold (dynamically between 128 KiB and 32 MiB) with
fresh mmap'd pages, which the kernel zeroes on first touch. A CPU forward pass that allocates a
new 16 MB activation for each op then spends more time in page faults than in arithmetic
(measured here: an eval-mode BatchNorm of 256x16x32x32 took 3.2 ms per call, 1.2 ms with the
thresholds raised). Raising the mmap and trim thresholds keeps such blocks in the heap for reuse;
this is what PyTorch's CPU performance guide achieves by preloading jemalloc or tcmalloc. The
`bnnkit` command calls tune() at start-up; BNNKIT_MALLOC_TUNE=0 turns it off.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameter numbers
_MMAP_THRESHOLD_MAX = 32 << 20                  # glibc's ceiling for 64-bit processes
_TRIM_THRESHOLD = 1 << 30


def tune() -> bool:
    """Raise glibc's mmap and trim thresholds; True if applied (glibc on Linux only)."""
    if os.environ.get("BNNKIT_MALLOC_TUNE", "1") == "0" or platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD))
    except (OSError, AttributeError):
        return False
