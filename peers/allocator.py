"""Keep a peer's freed vector buffers in the process (glibc ``mallopt``).

A round allocates and frees several arrays of L words (the encoded update, masks, the
masked input, received chunks, sums, the decoded result). glibc serves every allocation
above its mmap threshold (128 KiB, rising to at most 32 MiB) with fresh pages that the
kernel zero-fills on first touch and takes back on ``free``, so each round pays those page
faults again — several milliseconds per megabyte when ten site processes share two cores.
:func:`keep_freed_memory` raises the mmap threshold to glibc's maximum (32 MiB on 64-bit)
and stops the heap from being trimmed, so buffers up to 32 MiB are reused round after
round. Larger arrays (d ≳ 4·10^6 8-byte words) are still mapped and unmapped as before.

The cost is that the process keeps its peak heap until it exits (what a peer that runs
round after round needs anyway). The ``mpc-agg`` command calls it once at start-up;
``MPC_AGG_KEEP_FREED_MEMORY=0`` turns it off. Elsewhere (musl, macOS, Windows) it does
nothing. Measured in ``benchmarks/mqtt_compare.py`` (README, Benchmarks).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

#: glibc ``mallopt`` parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
#: glibc's largest mmap threshold on 64-bit hosts: 4 · 1024 · 1024 · sizeof(long).
_MMAP_THRESHOLD_MAX = 32 * 1024 * 1024
_NEVER_TRIM = (1 << 31) - 1


def keep_freed_memory() -> bool:
    """Raise glibc's mmap threshold and stop heap trimming; True if both took effect."""
    if os.environ.get("MPC_AGG_KEEP_FREED_MEMORY", "1") == "0":
        return False
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # no glibc (e.g. musl has no mallopt)
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    mmap = mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX)
    trim = mallopt(_M_TRIM_THRESHOLD, _NEVER_TRIM)
    return bool(mmap and trim)
