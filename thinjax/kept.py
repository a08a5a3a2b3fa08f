"""Arrays kept in the cache as safetensors files, checked on the way back.

One place for what the zoo's converted networks (`thinjax.zoo.converted`) and the kept
evaluation inputs (`thinjax.split_cache`) share: a sha256 over the metadata and the arrays
stored in the file itself, a read that refuses a file whose content does not match it,
and a write that puts a whole file in place atomically (temp file + ``os.replace``).
"""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from thinjax import fs

__all__ = ["ERRORS", "digest", "read", "write"]

# what a read or write of a kept file can raise (callers warn and fall back)
ERRORS = (OSError, ValueError, KeyError, SafetensorError)


def digest(meta: dict[str, str], arrays: dict[str, np.ndarray]) -> str:
    """sha256 over the metadata (but its own digest) and the arrays, in name order."""
    h = hashlib.sha256(json.dumps({k: v for k, v in meta.items() if k != "data_sha256"},
                                  sort_keys=True).encode())
    for k in sorted(arrays):
        a = np.ascontiguousarray(arrays[k])
        h.update(f"\0{k}\0{a.dtype.str}\0{a.shape}\0".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def read(path: str, names=None) -> tuple[dict[str, str], dict[str, np.ndarray]]:
    """(metadata, arrays) of the kept file `path` (the arrays `names`, default all);
    ValueError when its checksum does not match its content."""
    with safe_open(path, framework="np") as f:
        meta = f.metadata() or {}
        arrays = {k: f.get_tensor(k) for k in (f.keys() if names is None else names)}
    if meta.get("data_sha256") != digest(meta, arrays):
        raise ValueError("its checksum does not match its content")
    return meta, arrays


def write(path: str, arrays: dict[str, np.ndarray], meta: dict[str, str], prefix: str) -> None:
    """Keeps `arrays` with `meta` (and their checksum) at `path`, atomically; raises
    OSError or SafetensorError, leaving no partial file."""
    meta = {**meta, "data_sha256": digest(meta, arrays)}
    directory = os.path.dirname(path)
    tmp = None
    try:
        os.makedirs(directory, exist_ok=True)
        fd, tmp = fs.mkstemp(directory, f".{prefix}.part-")
        os.close(fd)
        save_file(arrays, tmp, metadata=meta)
        os.chmod(tmp, 0o666 & ~fs.umask())  # save_file leaves 0600: group-readable as mkstemp's
        os.replace(tmp, path)
        tmp = None
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.remove(tmp)
