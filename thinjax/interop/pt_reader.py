"""Reads ``torch.save`` files (``.pt``/``.pth``/``.bin``) as numpy arrays, without PyTorch.

PyTorch's format (since 1.6) is a zip archive: ``<prefix>/data.pkl``, a pickle of the saved
object in which each tensor is a call to ``torch._utils._rebuild_tensor_v2`` on a storage
named by a persistent id ``('storage', torch.<Type>Storage, key, location, numel)``; the
storage's bytes are the record ``<prefix>/data/<key>``; ``<prefix>/byteorder`` (``little``
or ``big``) says how they are laid out (absent: little-endian, the files of x86 machines).

The pickle is read by an ``Unpickler`` that resolves only a short list of globals, each to
a function or marker of this module (a tensor becomes a numpy array of its size and stride,
from its storage offset, copied out of the storage), plus ``collections.OrderedDict``.
Any other global is refused before anything is called: a file is data, never code. So is
the legacy (before PyTorch 1.6) format, which is not a zip archive. Every refusal is a
`CheckpointFormatError` naming the file, the reason and the fix.
"""

from __future__ import annotations

import collections
import io
import math
import os
import pickle
import zipfile
from collections.abc import Callable
from typing import Any

import ml_dtypes  # a dependency of JAX: bfloat16 for numpy
import numpy as np

from thinjax.errors import CheckpointFormatError

# torch.<name> storage classes -> the dtype of their elements (the legacy typed storages,
# which is how torch.save writes tensors of these dtypes)
STORAGE_DTYPES: dict[str, np.dtype] = {name: np.dtype(t) for name, t in {
    "DoubleStorage": np.float64, "FloatStorage": np.float32, "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16, "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8,
    "BoolStorage": np.bool_, "ComplexDoubleStorage": np.complex128,
    "ComplexFloatStorage": np.complex64}.items()}
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # the first pickle of a pre-1.6 torch.save file
FIX = ("re-save it as a plain state dict (torch.save(model.state_dict())) or as "
       ".safetensors, from a source you trust")


class _Sealed:
    """What the pickle can reach of this module. A pickle's BUILD would set attributes on
    any object it holds (``__setstate__`` first): these refuse, so no file changes them."""
    __slots__ = ()

    def __setstate__(self, state: Any) -> None:
        raise ValueError("the file sets attributes on an object that has none to set")


class _StorageType(_Sealed):
    """What ``torch.FloatStorage`` and its kind resolve to: their element dtype."""
    __slots__ = ("dtype",)

    def __init__(self, dtype: np.dtype):
        self.dtype = dtype


class _Storage(_Sealed):
    """One storage of the file: its elements, as a read-only 1-d array."""
    __slots__ = ("elements",)

    def __init__(self, elements: np.ndarray):
        self.elements = elements


class _Call(_Sealed):
    """One of this module's functions, as the pickle may call it (and not change it)."""
    __slots__ = ("fn",)

    def __init__(self, fn: Callable[..., np.ndarray]):
        self.fn = fn

    def __call__(self, *args: Any) -> np.ndarray:
        return self.fn(*args)


def _rebuild_tensor(storage: Any, offset: Any, size: Any, stride: Any, *rest: Any) -> np.ndarray:
    """``torch._utils._rebuild_tensor_v2(storage, storage_offset, size, stride,
    requires_grad, backward_hooks[, metadata])``: the tensor's elements as a new array."""
    if not isinstance(storage, _Storage) or not _ints(offset) or not _ints(*size) \
            or not _ints(*stride) or len(size) != len(stride):
        raise ValueError(f"a tensor with a malformed layout (offset {offset!r}, size {size!r}, "
                         f"stride {stride!r})")
    els = storage.elements
    if math.prod(size) == 0:
        return np.zeros(size, els.dtype)
    last = offset + sum((n - 1) * s for n, s in zip(size, stride))
    if offset < 0 or min(stride, default=0) < 0 or min(size, default=0) < 0 \
            or last >= els.size:
        raise ValueError(f"a tensor (offset {offset}, size {tuple(size)}, stride "
                         f"{tuple(stride)}) reaches past its storage of {els.size} elements")
    view = np.lib.stride_tricks.as_strided(
        els[offset:], shape=tuple(size), strides=tuple(s * els.itemsize for s in stride),
        writeable=False)
    return np.array(view, copy=True, order="C")


def _ints(*xs: Any) -> bool:
    return all(type(x) is int for x in xs)


def _rebuild_parameter(data: Any, requires_grad: Any = False, hooks: Any = None) -> np.ndarray:
    """``torch._utils._rebuild_parameter``: an ``nn.Parameter`` is its tensor."""
    if not isinstance(data, np.ndarray):
        raise ValueError("a parameter that holds no tensor")
    return data


ALLOWED: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _Call(_rebuild_tensor),
    ("torch._utils", "_rebuild_parameter"): _Call(_rebuild_parameter),
    **{("torch", name): _StorageType(dt) for name, dt in STORAGE_DTYPES.items()},
}


class _Refused(pickle.UnpicklingError):
    """A global outside ALLOWED."""

    def __init__(self, module: str, name: str):
        super().__init__(f"{module}.{name}")
        self.global_name = f"{module}.{name}"


class _Unpickler(pickle.Unpickler):
    """An unpickler that knows ALLOWED alone, and reads storages with `storage`."""

    def __init__(self, data: bytes, storage: Callable[[tuple], _Storage] | None):
        super().__init__(io.BytesIO(data))
        self._storage = storage

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in ALLOWED:
            raise _Refused(module, name)
        return ALLOWED[(module, name)]

    def persistent_load(self, pid: Any) -> _Storage:
        if self._storage is None:
            raise pickle.UnpicklingError("a persistent id outside a zip checkpoint")
        return self._storage(pid)


def _storage_reader(z: zipfile.ZipFile, prefix: str, byteorder: str
                    ) -> Callable[[Any], _Storage]:
    """persistent_load for the archive `z`: each storage read once, converted to the
    machine's byte order."""
    seen: dict[str, _Storage] = {}

    def storage(pid: Any) -> _Storage:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType) and isinstance(pid[2], str)
                and _ints(pid[4])):
            raise ValueError(f"a storage reference that is not PyTorch's: {pid!r}"[:200])
        _, kind, key, _, numel = pid
        if key not in seen:
            raw = z.read(f"{prefix}data/{key}")
            want = numel * kind.dtype.itemsize
            if len(raw) != want:
                raise ValueError(f"storage data/{key} holds {len(raw)} bytes, {want} expected")
            seen[key] = _Storage(_elements(raw, kind.dtype, byteorder))
        if seen[key].elements.dtype != kind.dtype:
            raise ValueError(f"storage data/{key} read as two dtypes")
        return seen[key]
    return storage


def _elements(raw: bytes, dtype: np.dtype, byteorder: str) -> np.ndarray:
    """`raw` as elements of `dtype`, in the machine's byte order (numbers are swapped
    as unsigned integers of their size: complex numbers part by part)."""
    part = dtype.itemsize // 2 if dtype.kind == "c" else dtype.itemsize
    if part == 1:
        return np.frombuffer(raw, dtype)
    order = "<" if byteorder == "little" else ">"
    return np.frombuffer(raw, f"{order}u{part}").astype(f"=u{part}", copy=False).view(dtype)


def _prefix(z: zipfile.ZipFile) -> str:
    """The archive's top folder (``archive/``, or the file's stem in older PyTorch)."""
    tops = [n[:-len("data.pkl")] for n in z.namelist()
            if n.endswith("data.pkl") and n.count("/") == 1]
    if len(tops) != 1:
        raise ValueError("a zip archive without exactly one <folder>/data.pkl: not written "
                         "by torch.save")
    return tops[0]


def _read_zip(path: str) -> Any:
    with zipfile.ZipFile(path) as z:
        prefix = _prefix(z)
        byteorder = "little"
        if f"{prefix}byteorder" in z.namelist():
            byteorder = z.read(f"{prefix}byteorder").decode("ascii", "replace").strip()
            if byteorder not in ("little", "big"):
                raise ValueError(f"unknown byte order {byteorder[:20]!r}")
        data = z.read(f"{prefix}data.pkl")
        return _Unpickler(data, _storage_reader(z, prefix, byteorder)).load()


def _refuse_non_zip(path: str) -> None:
    """Raises the reason a file that is not a zip archive cannot be read: a pickle asking
    for a global (tried with the same restricted unpickler), the legacy format, or else."""
    with open(path, "rb") as f:
        head = f.read(4)
        f.seek(0)
        if head.startswith(b"PK"):
            raise zipfile.BadZipFile("an incomplete or damaged zip archive")
        first = _Unpickler(f.read(), None).load()  # _Refused for a global
    if first == LEGACY_MAGIC:
        raise CheckpointFormatError(
            f"{path}: a PyTorch checkpoint in the legacy format (before PyTorch 1.6), which "
            "thinjax reads without PyTorch only in the zip format; load it with PyTorch and "
            "save it again (torch.save writes the zip format), or convert it to .safetensors")
    raise CheckpointFormatError(f"{path}: a bare pickle, not a torch.save checkpoint; "
                                + FIX)


def load(path: str) -> Any:
    """The object a ``torch.save`` zip file holds, each tensor a numpy array.

    Raises CheckpointFormatError for a file that is not one, a damaged one, and one whose
    pickle asks for any global outside ALLOWED (nothing of the file runs)."""
    try:
        if not zipfile.is_zipfile(path):
            _refuse_non_zip(path)
        return _read_zip(path)
    except CheckpointFormatError:
        raise
    except _Refused as e:
        raise CheckpointFormatError(
            f"{path}: not a plain tensor checkpoint: its pickle asks for the Python global "
            f"{e.global_name}, which only running code from the file could rebuild, and "
            f"thinjax never executes code from checkpoints; {FIX}") from None
    except Exception as e:  # noqa: BLE001  (damaged: zip, pickle or layout errors alike)
        first = str(e).splitlines()[0][:200] if str(e) else ""
        ext = os.path.splitext(path)[1] or "PyTorch"
        raise CheckpointFormatError(
            f"{path}: cannot read this {ext} checkpoint ({type(e).__name__}: {first}). "
            "Is the file complete and of the format its name says?") from None
