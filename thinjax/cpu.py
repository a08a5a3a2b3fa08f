"""CPU tuning, in one call: `enable()`. The commands make it; a library user may.

Importing thinjax changes nothing in the process. `enable()` turns on, for this process,
what makes thinjax fast when JAX computes on the CPU:

* glibc malloc settings that keep XLA:CPU's per-step buffers mapped (`thinjax.allocator`:
  one arena, no mmap, no trim; process-wide, so also for tf.data's and the user's threads;
  applied only on Linux with glibc when JAX can only compute on the CPU;
  ``THINJAX_NO_MALLOC_TUNING=1`` turns it off);
* oneDNN's convolutions for ``impl="auto"`` (`thinjax.ops.conv`: a float32 model on one
  CPU device; built with g++ the first time; ``THINJAX_CONV=xla`` turns it off).

Call it before anything computes or starts threads (a thread that has already allocated
keeps its own malloc arena): the commands do so when ``thinjax.commands`` is imported,
before TensorFlow or JAX load. Without it, ``auto`` is XLA's convolution and malloc is
glibc's default. `status()` says what is in effect; `cpu_description()` names the CPU for
benchmark tables.
"""

from __future__ import annotations

import hashlib
import os
import platform

from thinjax import allocator

__all__ = ["cpu_description", "enable", "status"]

_ISA = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8",
        "asimd", "sve", "sme")


def enable(env=None) -> dict[str, str]:
    """Applies the CPU tuning (module docstring); {"malloc": "applied" or why not,
    "convolution": "auto prefers oneDNN"}. Idempotent."""
    malloc = allocator.tune_malloc(env)
    # imported here, after malloc: loading jaxlib may start threads that allocate
    from thinjax.ops import conv  # loads jax: after the malloc tuning
    conv.prefer_onednn(True)
    return {"malloc": malloc, "convolution": "auto prefers oneDNN"}


def status() -> dict[str, str]:
    """What is in effect: the malloc settings and the convolution ``auto`` picks."""
    from thinjax.ops import conv  # loads jax: every command imports cpu (quick --help)
    return {"malloc": allocator.malloc_status(), "convolution": conv.status()}


def cpu_description() -> str:
    """The host CPU for benchmark tables: model name, logical cores, and the ISA flags that
    matter to XLA's and PyTorch's kernels (Linux /proc/cpuinfo; platform.processor else)."""
    model, flags = "", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, val = line.partition(":")
                key = key.strip()
                if key in ("model name", "Model name") and not model:
                    model = val.strip()
                elif key in ("flags", "Features") and not flags:
                    flags = set(val.split())
    except OSError:
        pass
    model = model or platform.processor() or platform.machine()
    isa = " ".join(f for f in _ISA if f in flags) or "ISA flags unknown"
    return f"{model}, {os.cpu_count()} logical cores, {isa}"


def machine_id() -> str:
    """A short name of this CPU type: its model and every ISA flag (what decides whether
    code compiled on one machine runs on another), hashed."""
    text = platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            info = f.read().split("\n\n", 1)[0]
        keep = [ln for ln in info.splitlines() if ln.split(":")[0].strip() in
                ("model name", "flags", "Features", "CPU implementer", "CPU part")]
        text += "\n".join(keep)
    except OSError:
        text += platform.processor()
    return hashlib.sha256(text.encode()).hexdigest()[:12]
