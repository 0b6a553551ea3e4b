"""keep_freed_cpu_memory: glibc's mmap threshold raised and trimming off, once, unless the user set them."""
from __future__ import annotations

import subprocess
import sys

import pytest

from tests.distributed.launch import ROOT

CHECK = """
import ctypes, sys, time
import lightning_trepo.training.cpu_heap as heap
applied = heap.keep_freed_cpu_memory()
# a 16 MiB block freed and allocated again: below the raised threshold it comes from the heap (no new mapping), so
# the second allocation page-faults nothing new; with glibc's start threshold (128 KiB) it is a fresh mmap each time
import resource
libc = ctypes.CDLL("libc.so.6"); libc.malloc.restype = ctypes.c_void_p; libc.free.argtypes = [ctypes.c_void_p]
def touch():
    p = libc.malloc(16 << 20); ctypes.memset(p, 1, 16 << 20); libc.free(p)
touch()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
touch()
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(applied, faults, heap.keep_freed_cpu_memory())
"""


def _run(env_extra: dict[str, str]) -> list[str]:
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    env.update(env_extra, PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_freed_blocks_are_reused_without_new_page_faults():
    applied, faults, again = _run({})
    assert applied == "True" and again == "True"
    assert int(faults) < 100  # 16 MiB = 4,096 pages: a fresh mapping would fault ~4,096 times


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_a_users_malloc_environment_wins():
    applied, faults, _ = _run({"MALLOC_TRIM_THRESHOLD_": "131072"})
    assert applied == "False" and int(faults) > 3000  # glibc's defaults: the block is mapped afresh
