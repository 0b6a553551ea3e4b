"""Keep freed CPU memory in the process heap while training on the CPU (glibc only).

An RL step allocates and frees the same large buffers over and over (activations, (C, V) logit chunks,
gradients). glibc serves requests above its mmap threshold (128 KiB at start, growing only as blocks are
freed) with fresh ``mmap`` calls and returns them with ``munmap``; every new mapping is page-faulted again
on first touch, and trimming hands the heap's top back to the kernel after each step. Raising the mmap
threshold to glibc's maximum (32 MiB on 64-bit) and switching trimming off keeps those pages: measured on the
2-core CPU machine, one SmolLM2-135M GRPO step (8 prompts x 4 samples x 32 tokens, KL 0.01) went from 14.1 s
to 12.2 s, with the system time of 4 steps from 6.6 s to 4.6 s and the same max RSS within 2%.

A user's own ``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_`` environment settings win.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameter numbers (malloc.h)
MAX_MMAP_THRESHOLD = 32 << 20  # glibc refuses more on 64-bit (HEAP_MAX_SIZE / 2)
NO_TRIM = 2**31 - 1  # mallopt takes an int: trim only when 2 GiB lie free at the heap's top
_applied: bool | None = None


def keep_freed_cpu_memory() -> bool:
    """Apply the two ``mallopt`` settings once per process; True when they are in force."""
    global _applied
    if _applied is None:
        _applied = _mallopt()
    return _applied


def _mallopt() -> bool:
    if any(k in os.environ for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")):
        return False
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl, macOS, Windows): nothing to tune
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MAX_MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, NO_TRIM))
