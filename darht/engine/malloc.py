"""The C allocator's policy for big blocks on CPU (`cpu_malloc` in the run's config).

torch's CPU tensors come from malloc. With glibc's default, blocks above the mmap threshold
(128 KiB, growing with each freed mmapped block to at most 32 MiB) are fresh mmaps returned to
the kernel on free, so a training step (attack graphs, teacher activations and the training graph,
one after another, of different sizes) faults in and zeroes new memory on every pass: on the
2-core benchmark machine the paper-mode DARHT step ran ~10% above the sum of its passes, the
difference being minor page faults and system time (`benchmarks/bench_distill.py --malloc
system,retain`, results/bench_distill.json).

Policies:
  retain (the default): mallopt(M_MMAP_MAX, 0) and mallopt(M_TRIM_THRESHOLD, 2 GiB - 1): big blocks
    come from the heap and freed memory is kept for the next pass. The cost: the process keeps its
    peak footprint until it exits (what PyTorch's CPU tuning guide gets from jemalloc or tcmalloc
    by LD_PRELOAD; this needs nothing installed).
  system: leave the allocator as it is.
Only glibc has mallopt; elsewhere (musl, macOS, Windows) `retain` does nothing and says so once.
The setting is process-wide and cannot be undone within the process (glibc's dynamic threshold
is switched off by the first mallopt), so it is applied once, by the trainer, on CPU only.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

POLICIES = {
    "retain": "mallopt(M_MMAP_MAX, 0), mallopt(M_TRIM_THRESHOLD, 2 GiB - 1): big blocks from the heap, "
              "freed memory kept for the next pass",
    "system": "glibc's default: blocks above the mmap threshold are fresh mmaps, unmapped on free "
              "(every large activation is new memory the kernel faults in and zeroes)",
}
M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # glibc's malloc.h
_applied: str | None = None


def _mallopt():
    """glibc's mallopt, or None where the C library has none."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        fn = libc.mallopt
    except (OSError, AttributeError):
        return None
    fn.argtypes, fn.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return fn


def set_cpu_malloc(policy: str, *, quiet: bool = False) -> bool:
    """Apply `policy` (see POLICIES) to this process; True if it is in effect. Idempotent."""
    global _applied
    if policy not in POLICIES:
        raise ValueError(f"cpu_malloc must be one of {', '.join(POLICIES)}, got {policy!r}")
    if policy == "system":  # nothing to change; in effect unless `retain` came first
        return _applied != "retain"
    if _applied == "retain":
        return True
    mallopt = _mallopt()
    ok = mallopt is not None and bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, 2**31 - 1))
    if ok:
        _applied = "retain"
    elif not quiet:
        print("note: cpu_malloc 'retain' needs glibc's mallopt; the C allocator is left as it is",
              file=sys.stderr)
    return ok


def applied() -> str:
    """The policy in effect in this process ('retain' once applied, else 'system')."""
    return _applied or "system"
