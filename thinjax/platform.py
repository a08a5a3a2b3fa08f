"""Fast XLA:CPU flags, applied when thinjax is imported (before JAX starts a backend).

XLA's CPU compiler can hand dots, elementwise ops and reductions to its YNNPACK fusions
(``--xla_cpu_experimental_ynn_fusion_type=dot,eltwise,reduce``). Before thinjax's model put
a fusion barrier on every residual block (`thinjax.models.resnet.fusion_barrier`), the flag
made a ResNet-56 training step up to 2.2x faster; with the barrier, the default path is as
fast or faster (``docs/performance.md``), so the flag is **off by default**. (A ResNet-152
compile stall seen with it once, >5 min, did not reproduce on Intel or AMD VMs later.)
``THINJAX_CPU_FLAGS=1`` turns it on; thinjax
then appends the flag to ``XLA_FLAGS`` when:

* the user has not set ``THINJAX_NO_CPU_FLAGS=1`` (the opt-out, which wins),
* ``XLA_FLAGS`` does not already name the flag (the user's value wins),
* ``JAX_PLATFORMS`` (if set) includes ``cpu`` (the flag only concerns the CPU compiler),
* the installed jaxlib knows the flag (an unknown flag in ``XLA_FLAGS`` aborts the
  process, so the flag's name is looked up in jaxlib's shared library first), and
* no JAX backend has started yet (later, XLA would no longer read ``XLA_FLAGS``).

Everything else in ``XLA_FLAGS`` (e.g. ``--xla_force_host_platform_device_count``) is
kept: the flag is appended, and recorded in ``THINJAX_ADDED_XLA_FLAGS`` so that a child
process started with ``THINJAX_NO_CPU_FLAGS=1`` (or ``THINJAX_CPU_FLAGS=0``) removes it.
``applied()`` says what happened and why.
"""

from __future__ import annotations

import glob
import mmap
import os
import platform as _stdlib_platform
import sys

__all__ = ["CPU_FLAGS", "OPT_IN", "OPT_OUT", "apply_cpu_defaults", "applied", "cpu_description",
           "jaxlib_knows"]

OPT_IN = "THINJAX_CPU_FLAGS"
OPT_OUT = "THINJAX_NO_CPU_FLAGS"
# what thinjax appended to XLA_FLAGS, so that a child process that opts out (inheriting the
# parent's XLA_FLAGS) can take exactly that back out
MARKER = "THINJAX_ADDED_XLA_FLAGS"
# flag name -> value thinjax sets
CPU_FLAGS: dict[str, str] = {"xla_cpu_experimental_ynn_fusion_type": "dot,eltwise,reduce"}

_STATE: dict[str, str] = {}


def _jaxlib_dir() -> str | None:
    import importlib.util
    spec = importlib.util.find_spec("jaxlib")
    if spec is None or not spec.submodule_search_locations:
        return None
    return list(spec.submodule_search_locations)[0]


def jaxlib_knows(flag: str) -> bool:
    """Whether the installed jaxlib's XLA defines `flag` (its name is in a shared library).

    Reads no more than it must: the libraries are memory-mapped and searched for the
    flag's name (the 350 MB library of jaxlib 0.10 answers in a few milliseconds)."""
    d = _jaxlib_dir()
    if d is None:
        return False
    needle = flag.encode()
    libs = sorted(glob.glob(os.path.join(d, "*.so")) + glob.glob(os.path.join(d, "*.dylib"))
                  + glob.glob(os.path.join(d, "*.pyd")), key=os.path.getsize, reverse=True)
    for lib in libs:
        try:
            with open(lib, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
                if m.find(needle) >= 0:
                    return True
        except (OSError, ValueError):
            continue
    return False


def _backend_started() -> bool:
    xb = sys.modules.get("jax._src.xla_bridge")
    return bool(getattr(xb, "_backends", None))


def _skip_reason(env) -> str | None:
    if env.get(OPT_OUT, "").strip() not in ("", "0"):
        return f"{OPT_OUT} is set"
    if env.get(OPT_IN, "").strip() in ("", "0"):
        return (f"off by default (not faster than the default path, docs/performance.md); "
                f"{OPT_IN}=1 turns it on")
    platforms = env.get("JAX_PLATFORMS", "").strip()
    if platforms and "cpu" not in [p.strip() for p in platforms.split(",")]:
        return f"JAX_PLATFORMS={platforms} has no cpu"
    if _backend_started():
        return "a JAX backend had already started before thinjax was imported"
    return None


def _remove_inherited(env) -> None:
    """Take out of XLA_FLAGS what a parent's thinjax appended (the opt-out, inherited)."""
    added = env.pop(MARKER, "").split()
    if added:
        env["XLA_FLAGS"] = " ".join(t for t in env.get("XLA_FLAGS", "").split()
                                    if t not in added)


def apply_cpu_defaults(env=None) -> dict[str, str]:
    """Append thinjax's CPU flags to ``env["XLA_FLAGS"]`` (default: ``os.environ``).

    Returns {flag: what happened}: "set", or why not ("user set it", "THINJAX_NO_CPU_FLAGS
    is set", "off by default ...", "unknown to this jaxlib", ...). When thinjax does not set
    them, flags that thinjax appended in a parent process (inherited through the
    environment) are removed again."""
    env = os.environ if env is None else env
    reason = _skip_reason(env)
    if reason and not reason.startswith("JAX_PLATFORMS") and "backend" not in reason:
        _remove_inherited(env)
    out: dict[str, str] = {}
    for flag, value in CPU_FLAGS.items():
        current, token = env.get("XLA_FLAGS", ""), f"--{flag}={value}"
        if reason:
            out[flag] = reason
        elif token in env.get(MARKER, "").split() and token in current.split():
            out[flag] = "set"  # by thinjax in a parent process
        elif f"--{flag}=" in current or current.split().count(f"--{flag}"):
            out[flag] = "user set it"
        elif not jaxlib_knows(flag):
            out[flag] = "unknown to this jaxlib"
        else:
            env["XLA_FLAGS"] = (current + " " if current.strip() else "") + token
            env[MARKER] = (env.get(MARKER, "") + " " + token).strip()
            out[flag] = "set"
    if env is os.environ:
        _STATE.clear()
        _STATE.update(out)
    return out


def applied() -> dict[str, str]:
    """What `apply_cpu_defaults` did when thinjax was imported: {flag: "set" or why not}."""
    return dict(_STATE)


_ISA = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8",
        "asimd", "sve", "sme")


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
    model = model or _stdlib_platform.processor() or _stdlib_platform.machine()
    isa = " ".join(f for f in _ISA if f in flags) or "ISA flags unknown"
    return f"{model}, {os.cpu_count()} logical cores, {isa}"
