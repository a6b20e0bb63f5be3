"""pretrain.allocator: freed memory kept in the heap (glibc), checked in fresh processes through glibc's own
accounting (``mallinfo2``), so that this test process keeps its defaults."""

from __future__ import annotations

import json
import platform
import subprocess
import sys

import pytest

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

PROBE = r"""
import ctypes, json
import torch
from pretrain.allocator import allocator_mode, keep_freed_memory

class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
mode = keep_freed_memory()
again = keep_freed_memory()
before = libc.mallinfo2()
big = torch.empty(200 * 2**20, dtype=torch.uint8)  # 200 MB, far above glibc's largest mmap threshold (32 MB)
big.fill_(1)
held = libc.mallinfo2()
del big
freed = libc.mallinfo2()
print(json.dumps({"mode": mode, "again": again, "reported": allocator_mode(),
                  "mmapped_held": held.hblkhd - before.hblkhd, "heap_held": held.arena - before.arena,
                  "heap_after_free": freed.arena - before.arena}))
"""


def _probe(env_value: str | None, subprocess_env: dict[str, str]) -> dict:
    env = dict(subprocess_env)
    env.pop("BENCH_MALLOC", None)
    if env_value is not None:
        env["BENCH_MALLOC"] = env_value
    proc = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not GLIBC, reason="glibc only")
def test_heap_mode_serves_large_tensors_from_the_heap_and_keeps_them(subprocess_env: dict[str, str]) -> None:
    heap = _probe(None, subprocess_env)
    assert heap["mode"] == heap["again"] == heap["reported"] == "heap"
    assert heap["mmapped_held"] < 2**20  # the 200 MB tensor is not a private mapping ...
    assert heap["heap_held"] >= 200 * 2**20  # ... it lives in the heap
    assert heap["heap_after_free"] >= 200 * 2**20  # and the heap keeps it after the tensor is freed

    system = _probe("system", subprocess_env)
    assert system["mode"] == system["reported"] == "system"
    assert system["mmapped_held"] >= 200 * 2**20  # glibc's default: a fresh mapping, returned when freed


def test_unknown_mode_is_refused(subprocess_env: dict[str, str]) -> None:
    env = {**subprocess_env, "BENCH_MALLOC": "jemalloc"}
    code = "from pretrain.allocator import keep_freed_memory; keep_freed_memory()"
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "BENCH_MALLOC must be 'heap' or 'system'" in proc.stderr
