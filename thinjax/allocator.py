"""Keep XLA:CPU's per-step buffers in memory that is already mapped (glibc malloc settings).

XLA:CPU allocates each execution's temporary buffer (all intermediate activations of a
training step: 167 MB for ResNet-20 w=8 at batch 128) when the execution starts and frees
it when it ends. glibc serves an allocation that large with a fresh ``mmap`` and returns it
with ``munmap``: the buffer is new, unmapped memory at every step, so each of its pages
costs a page fault and a zeroing the first time the step writes it (ResNet-20 w=8:
~41,000 page faults per step; without them its training step is 1.25-1.37x faster on one
core of the 2-core VM of ``docs/performance.md``, which gives the commands). The
allocation happens on one of XLA's worker threads, whose malloc arena cannot grow past
64 MB and so maps any larger block directly, whatever the mmap threshold says.

`tune_malloc` sets three ``mallopt`` parameters, process-wide, when `thinjax.cpu.enable()`
is called (the commands call it; importing thinjax changes nothing):

* ``M_ARENA_MAX=1``: every thread allocates from the main arena, which grows with ``brk``;
* ``M_MMAP_MAX=0``: no allocation is served by ``mmap``, so freed blocks return to the heap;
* ``M_TRIM_THRESHOLD=2**31-1``: up to 2 GiB of free memory at the top of the heap is kept
  rather than handed back to the kernel after every step.

The next step then reuses the same, already-mapped pages (0 page faults per step once the
heap has settled: when a buffer is still in use as the next step allocates, the heap grows
for a few steps first). The cost: memory a process has freed stays in the process (its
peak, not its current use, is what it holds), and threads share one arena lock. Both
matter little when JAX computes on the CPU, and the tuning is only applied then: on Linux
with glibc, when ``JAX_PLATFORMS`` is ``cpu``, or is unset and no accelerator plugin
(``libtpu``, ``jax_plugins``) is installed.
``THINJAX_NO_MALLOC_TUNING=1`` turns it off. Numerics are untouched (only where buffers
live changes). Measured in ``docs/performance.md``.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import sys

__all__ = ["MALLOPT", "OPT_OUT", "malloc_status", "tune_malloc"]

OPT_OUT = "THINJAX_NO_MALLOC_TUNING"
# glibc's malloc.h parameter numbers -> the values thinjax sets
M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8
MALLOPT: dict[int, int] = {M_ARENA_MAX: 1, M_MMAP_MAX: 0, M_TRIM_THRESHOLD: 2**31 - 1}
ACCELERATOR_MODULES = ("libtpu", "jax_plugins")

_STATUS: list[str] = ["not applied"]


def _skip_reason(env) -> str | None:
    if env.get(OPT_OUT, "").strip() not in ("", "0"):
        return f"{OPT_OUT} is set"
    if not sys.platform.startswith("linux"):
        return f"not Linux ({sys.platform})"
    platforms = [p.strip() for p in env.get("JAX_PLATFORMS", "").split(",") if p.strip()]
    if platforms and platforms != ["cpu"]:
        return f"JAX_PLATFORMS={','.join(platforms)} is not cpu alone"
    if not platforms:
        found = [m for m in ACCELERATOR_MODULES if importlib.util.find_spec(m) is not None]
        if found:
            return f"an accelerator plugin is installed ({', '.join(found)})"
    return None


def _glibc():
    try:
        libc = ctypes.CDLL(None)
    except OSError:
        return None
    return libc if hasattr(libc, "gnu_get_libc_version") and hasattr(libc, "mallopt") else None


def tune_malloc(env=None) -> str:
    """Apply `MALLOPT` when JAX will compute on the CPU (see the module docstring).

    Returns what happened: "applied", or why not. Call it before JAX starts its backend: a
    thread that has already allocated keeps its own arena."""
    env = os.environ if env is None else env
    reason = _skip_reason(env)
    libc = None if reason else _glibc()
    if reason is None and libc is None:
        reason = "the C library is not glibc"
    if reason is None:
        failed = [k for k, v in MALLOPT.items()
                  if libc.mallopt(ctypes.c_int(k), ctypes.c_int(v)) != 1]
        reason = f"mallopt refused parameters {failed}" if failed else None
    _STATUS[0] = reason or "applied"
    return _STATUS[0]


def malloc_status() -> str:
    """What `tune_malloc` did ("applied", or why not); "not applied" before it ran."""
    return _STATUS[0]
