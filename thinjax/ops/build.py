"""Build and load thinjax's oneDNN convolution kernels (``onednn_conv.cc`` for training,
``onednn_infer.cc`` and ``rowconv*.cc`` for inference) for XLA:CPU.

The kernels are an XLA FFI library compiled on first use with the C++ compiler (``$CXX``,
else ``g++``) against the headers of jaxlib (``jax.ffi.include_dir()``) and of oneDNN (the
``onednn-devel-cpu-gomp`` wheel, a thinjax dependency on Linux x86-64), linked with the
``onednn-cpu-gomp`` wheel's ``libdnnl.so.3``. The library goes to the cache's ``ops/``
folder (`thinjax.cache`: ``$THINJAX_CACHE/ops``, by default ``~/.cache/thinjax/ops``) under
a name that hashes the sources, the compiler command and the library versions, so a build
happens once per machine and environment (about 5 s). Concurrent processes take a file
lock; the library is written to a temporary file and renamed, so a half-written library is
never loaded, and a cached file that does not load is rebuilt once.

`load()` returns the loaded library with its handlers registered with JAX, or raises
`KernelUnavailable` saying what is missing and how to get it; `thinjax.ops.conv` then uses
XLA's own convolution.
"""

from __future__ import annotations

import ctypes
import fcntl
import hashlib
import importlib.metadata
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import jax

from thinjax import cache, fs
from thinjax.errors import ThinjaxError

__all__ = ["HANDLERS", "KernelUnavailable", "cache_dir", "load", "onednn_paths"]

SOURCE = Path(__file__).with_name("onednn_conv.cc")  # training: forward and gradients
INFER_SOURCE = Path(__file__).with_name("onednn_infer.cc")  # inference: fused post-ops
# inference: NHCW row kernels, the tiles and their kernels per instruction set
ROW_SOURCES = tuple(Path(__file__).with_name(f"rowconv{s}.cc") for s in ("", "_avx512", "_avx2"))
SOURCES = (SOURCE, INFER_SOURCE, *ROW_SOURCES)
# included by the sources: hashed too
HEADERS = tuple(Path(__file__).with_name(h) for h in ("rowconv.h", "rowconv_tiles.h"))
# FFI target name -> symbol in the library
HANDLERS = {"thinjax_onednn_conv_fwd": "ThinjaxConvForward",
            "thinjax_onednn_conv_bwd_data": "ThinjaxConvBackwardData",
            "thinjax_onednn_conv_bwd_weights": "ThinjaxConvBackwardWeights",
            "thinjax_identity": "ThinjaxIdentity",
            "thinjax_onednn_conv_infer": "ThinjaxConvInfer",
            "thinjax_onednn_conv_infer_add": "ThinjaxConvInferAdd"}
# functions returning a C string: oneDNN's version, and the implementation a bfloat16
# convolution gets here
QUERIES = ("ThinjaxOneDnnVersion", "ThinjaxOneDnnBf16Impl")
# int64 functions (onednn_infer.cc): the kernel layout oneDNN's inference convolution
# wants, whether it has nChw16c kernels here, whether the row kernels run here
INT_QUERIES = ("ThinjaxInferKernelLayout", "ThinjaxInferBlockedKernels",
               "ThinjaxInferRowKernels")
RUNTIME_DIST, HEADERS_DIST = "onednn-cpu-gomp", "onednn-devel-cpu-gomp"
INSTALL_HINT = f"pip install {RUNTIME_DIST} {HEADERS_DIST}"


log = logging.getLogger(__name__)
_LOADED: dict[str, ctypes.CDLL] = {}
_FAILED: list[str] = []


class KernelUnavailable(ThinjaxError, RuntimeError):
    """thinjax's oneDNN kernels cannot be built or loaded here (the message says why)."""


def cache_dir() -> Path:
    """Where built libraries are kept (see the module docstring)."""
    return Path(cache.kernels_dir())


def _dist_file(dist: str, name: str) -> Path | None:
    try:
        files = importlib.metadata.distribution(dist).files or []
    except importlib.metadata.PackageNotFoundError:
        return None
    for f in files:
        if str(f).replace("\\", "/").endswith(name):
            return Path(f.locate()).resolve()
    return None


def onednn_paths() -> tuple[Path, Path]:
    """(folder holding ``libdnnl.so.3``, include folder holding ``oneapi/dnnl/dnnl.hpp``)."""
    if not (sys.platform.startswith("linux") and os.uname().machine == "x86_64"):
        raise KernelUnavailable(f"oneDNN kernels are built on Linux x86-64 only "
                                f"(this is {sys.platform} {os.uname().machine})")
    lib = _dist_file(RUNTIME_DIST, "/libdnnl.so.3")
    header = _dist_file(HEADERS_DIST, "/oneapi/dnnl/dnnl.hpp")
    if lib is None or header is None:
        missing = RUNTIME_DIST if lib is None else HEADERS_DIST
        raise KernelUnavailable(f"oneDNN not found: the {missing} wheel is not installed "
                                f"({INSTALL_HINT})")
    return lib.parent, header.parent.parent.parent


def _command(out: Path) -> list[str]:
    libdir, include = onednn_paths()
    cxx = os.environ.get("CXX", "g++")
    if shutil.which(cxx) is None:
        raise KernelUnavailable(f"no C++ compiler: {cxx!r} is not on PATH (install g++, or set "
                                "CXX), so thinjax's oneDNN kernels cannot be built")
    return [cxx, "-O2", "-std=c++17", "-shared", "-fPIC", "-w", "-I", jax.ffi.include_dir(),
            "-I", str(include), *map(str, SOURCES), "-o", str(out), "-L", str(libdir),
            "-l:libdnnl.so.3", f"-Wl,-rpath,{libdir}"]


def _library_path() -> Path:
    """The cached library's path: a hash of the source, the command and the versions."""
    h = hashlib.sha256(b"".join(src.read_bytes() for src in (*SOURCES, *HEADERS)))
    h.update(" ".join(_command(Path("OUT"))).encode())
    for dist in ("jaxlib", RUNTIME_DIST, HEADERS_DIST):
        h.update(f"{dist}={importlib.metadata.version(dist)}".encode())
    return cache_dir() / f"libthinjax_onednn-{h.hexdigest()[:16]}.so"


def _build(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.parent / ".build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be building the same library
        if path.exists():
            return
        fd, tmp = fs.mkstemp(str(path.parent), "tmp", ".so", mode=0o777)
        os.close(fd)
        t0 = time.perf_counter()
        log.info("building thinjax's oneDNN convolution kernels into %s", path)
        try:
            res = subprocess.run(_command(Path(tmp)), capture_output=True, text=True)
            if res.returncode != 0:
                names = ", ".join(src.name for src in SOURCES)
                raise KernelUnavailable(f"building {names} failed ({res.returncode}):\n"
                                        f"{res.stderr[-2000:]}")
            _record(Path(tmp), path)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        log.info("built in %.1f s", time.perf_counter() - t0)


def load() -> ctypes.CDLL:
    """The kernel library, built if needed, its handlers registered with JAX for the CPU."""
    if "lib" in _LOADED:
        return _LOADED["lib"]
    if _FAILED:  # do not retry a failed build in every call
        raise KernelUnavailable(_FAILED[0])
    try:
        _LOADED["lib"] = _load()
    except OSError as e:  # e.g. an unwritable cache folder
        _FAILED.append(f"cannot build into {cache_dir()}: {e} (set THINJAX_CACHE to a "
                       "writable folder)")
        raise KernelUnavailable(_FAILED[0]) from e
    except KernelUnavailable as e:
        _FAILED.append(str(e))
        raise
    return _LOADED["lib"]


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _record(built: Path, path: Path) -> None:
    """Writes ``LIB.sha256`` (size and checksum of the library about to be put at `path`)."""
    rec = path.with_name(path.name + ".sha256")
    tmp = rec.with_name(rec.name + f".tmp-{os.getpid()}")
    tmp.write_text(f"{built.stat().st_size} {_digest(built)}\n")
    os.replace(tmp, rec)


def _intact(path: Path) -> bool:
    """Whether the library at `path` is the one built here: its size and checksum match
    the record written at build time (checked before dlopen: a truncated or replaced file
    can crash the process inside dlopen, with no exception to catch)."""
    rec = path.with_name(path.name + ".sha256")
    try:
        size, digest = rec.read_text().split()
        return path.stat().st_size == int(size) and _digest(path) == digest
    except (OSError, ValueError):
        return False


def _open(path: Path) -> ctypes.CDLL:
    """The library at `path`, built first if missing; a file that is not the one recorded
    at build time, does not load, or lacks the handlers, is rebuilt once."""
    if path.exists() and not _intact(path):
        log.warning("thinjax: %s is not the library built here (size or checksum differ); "
                    "rebuilding it", path)
        path.unlink(missing_ok=True)
    if not path.exists():
        _build(path)
    try:
        return _checked(ctypes.CDLL(str(path)), path)
    except AttributeError as e:  # loaded, so this process cannot load a rebuilt copy
        path.unlink(missing_ok=True)
        raise KernelUnavailable(f"{e}: not thinjax's library (removed; the next run "
                                "rebuilds it)") from e
    except OSError as first:
        log.warning("thinjax: %s does not load (%s); rebuilding it", path, first)
        path.unlink(missing_ok=True)
        _build(path)
        try:
            return _checked(ctypes.CDLL(str(path)), path)
        except (OSError, AttributeError) as e:
            raise KernelUnavailable(f"cannot load {path} even after rebuilding it: {e}; "
                                    "set THINJAX_CONV=xla to use XLA's convolution") from e


def _checked(lib: ctypes.CDLL, path: Path) -> ctypes.CDLL:
    missing = [s for s in (*HANDLERS.values(), *QUERIES, *INT_QUERIES) if not hasattr(lib, s)]
    if missing:
        raise AttributeError(f"{path} lacks {', '.join(missing)}")
    return lib


def _load() -> ctypes.CDLL:
    lib = _open(_library_path())
    for target, symbol in HANDLERS.items():
        jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(lib, symbol)),
                                    platform="cpu")
    for query in QUERIES:
        getattr(lib, query).restype = ctypes.c_char_p
    for query in INT_QUERIES:
        getattr(lib, query).restype = ctypes.c_int64
    lib.ThinjaxInferKernelLayout.argtypes = [ctypes.c_int64] * 14
    lib.ThinjaxInferBlockedKernels.argtypes = []
    lib.ThinjaxInferRowKernels.argtypes = []
    return lib
