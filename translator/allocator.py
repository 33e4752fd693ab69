"""Keep freed memory in the process between forward passes (glibc malloc), instead of giving it
back to the kernel and page-faulting it in again on the next pass.

Why: a NAFNet-tiny forward pass at 256x256 allocates and frees tens of MB of activations. With
glibc's defaults the freed top of the heap is trimmed back to the kernel (threshold: twice the
largest memory-mapped block freed so far) and large blocks come from fresh `mmap`s, so every pass
page-faults them back in: about 9,000 minor faults per pass here, measured as 25-30% of a
256x256 bf16 pass on 2 cores (90-95 -> 63-69 ms), 19% at 512x512 (259 -> 211 ms), 12% at
1024x1024 (benchmarks/RESULTS.md). PyTorch's CPU performance guide recommends jemalloc or
tcmalloc for the same reason; `mallopt` gets the effect without preloading a library.

Pure standard library (ctypes); a no-op where the C library is not glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

# mallopt parameter numbers (glibc <malloc.h>).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
# Blocks up to this size come from the heap instead of their own mmap (glibc's maximum on 64-bit:
# 32 MiB). A 512x512 tile's largest activation (16 channels, fp32) is 16 MiB.
MMAP_THRESHOLD_BYTES = 32 << 20
# Free memory at the top of the heap up to this much stays with the process: the resident set
# grows by about one pass's working set (+40 MB at 256x256, +120 MB at 1024x1024 measured).
TRIM_THRESHOLD_BYTES = 256 << 20
# Set by a user who tunes glibc malloc themselves: theirs wins.
USER_SETTINGS = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "GLIBC_TUNABLES")
# "0" here keeps glibc's defaults (how the benchmarks measure the path before this module).
OPT_OUT = "IMG2IMG_RETAIN_FREED_MEMORY"

_applied: bool | None = None


def retain_freed_memory() -> bool:
    """Make this process keep up to `TRIM_THRESHOLD_BYTES` of freed heap and serve blocks up to
    `MMAP_THRESHOLD_BYTES` from the heap (process-wide, for all threads; idempotent).

    Returns True when glibc accepted both settings; False where the C library is not glibc
    (musl, macOS: nothing changes), where `IMG2IMG_RETAIN_FREED_MEMORY=0`, or where the user set
    glibc's own malloc variables (`USER_SETTINGS`), which are left as they are. Never raises."""
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if os.environ.get(OPT_OUT, "1") == "0" or any(name in os.environ for name in USER_SETTINGS):
        return False
    if platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # Trim first: setting it also stops glibc from raising the thresholds dynamically.
    _applied = bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)) and \
        bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))
    return _applied
