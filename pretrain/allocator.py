"""Keep freed memory in the process for reuse (glibc's allocator), so that large tensors stop costing page faults.

A training step frees and re-allocates the same large buffers every iteration: the weight gradients of fc6/fc7
(9216 x 4096 floats, 151 MB each), of the inpainting bottleneck (131 MB each), activations of a 800x600 Fast
R-CNN image. glibc serves every request above its mmap threshold (at most 32 MB) with a fresh ``mmap`` and returns
it with ``munmap`` when freed, so each step touches those pages for the first time again: one page fault per 4 KB,
tens of milliseconds per step on CPU. ``keep_freed_memory`` turns that off for the process: every allocation comes
from the heap (``M_MMAP_MAX = 0``) and freed memory stays there for the next step (``M_TRIM_THRESHOLD`` at its
maximum). The arithmetic is untouched. The costs: the process gives memory back to the system only when it exits,
and its peak memory can be higher (freed blocks are not always the right size for the next request). The gains
and costs measured on each hot path are in docs/performance.md ("What was optimised").

Applied by the ``bench`` entry point and by ``bench speed``'s measuring processes, so that the speed figures are
those of the commands. ``BENCH_MALLOC=system`` in the environment keeps glibc's defaults. Other C libraries (macOS,
musl) are left alone.
"""

from __future__ import annotations

import ctypes
import os
import platform

#: environment variable: ``heap`` (default) or ``system`` (glibc's defaults)
ENV = "BENCH_MALLOC"
_M_TRIM_THRESHOLD = -1  # glibc <malloc.h>
_M_MMAP_MAX = -4
_state: str | None = None


def keep_freed_memory() -> str:
    """Apply the setting once per process; returns the allocator mode now in effect: ``heap`` (applied),
    ``system`` (opted out with ``BENCH_MALLOC=system``) or ``unsupported`` (not glibc)."""
    global _state
    if _state is not None:
        return _state
    choice = os.environ.get(ENV, "heap").strip().lower()
    if choice not in ("heap", "system"):
        raise ValueError(f"{ENV} must be 'heap' or 'system', got {choice!r}")
    if choice == "system":
        _state = "system"
    elif platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        _state = "unsupported"
    else:
        libc = ctypes.CDLL(None)
        ok = libc.mallopt(_M_MMAP_MAX, 0) == 1 and libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) == 1
        _state = "heap" if ok else "unsupported"
    return _state


def allocator_mode() -> str:
    """The mode set by ``keep_freed_memory`` in this process, ``system`` when it was not called."""
    return _state or "system"
