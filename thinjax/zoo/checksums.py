"""Checksums of the zoo's files: git blob ids, LFS pointers, sha256, and the verification
cache (``verified.json`` in the zoo's cache folder) that spares hashing a file again while
its size, mtime, inode and ctime are unchanged."""

from __future__ import annotations

import hashlib
import json
import os
from typing import TYPE_CHECKING, Any

from thinjax import cache, fs

if TYPE_CHECKING:
    from thinjax.zoo import Entry

CHUNK = 1 << 20


def git_blob_id(data: bytes) -> str:
    """Git's object id of a file with content `data`."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    """The Git LFS pointer file of a content with this sha256 and size."""
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n" \
        .encode()


def file_digests(path: str) -> dict[str, Any]:
    """{'size', 'sha256', 'blob'} of the file at `path`, in one pass."""
    size = os.path.getsize(path)
    sha, blob = hashlib.sha256(), hashlib.sha1(b"blob %d\0" % size)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            sha.update(chunk)
            blob.update(chunk)
    return {"size": size, "sha256": sha.hexdigest(), "blob": blob.hexdigest()}


def matches(e: Entry, d: dict[str, Any]) -> bool:  # e: a thinjax.zoo.Entry
    """Whether digests `d` are those of `e`'s file (content or, under LFS, its pointer)."""
    if e.size is not None and d["size"] != e.size:
        return False
    if e.sha256:
        return d["sha256"] == e.sha256
    return e.blob in (d["blob"], git_blob_id(lfs_pointer(d["sha256"], d["size"])))


def _verified_db() -> str:
    """The verification cache: realpath -> digests with size and mtime."""
    return os.path.join(cache.zoo_dir(), "verified.json")


def _read_db() -> dict[str, Any]:
    """The verification cache's contents ({} when absent or unreadable)."""
    try:
        with open(_verified_db()) as f:
            db = json.load(f)
        return db if isinstance(db, dict) else {}
    except (OSError, ValueError):
        return {}


def _remember(path: str, d: dict[str, Any]) -> None:
    """Records `path`'s digests with its size and mtime; best effort (a read-only cache
    only means hashing again next time)."""
    st = os.stat(path)
    db = _read_db()
    db[os.path.realpath(path)] = {**d, **_stamp(st)}
    try:
        os.makedirs(cache.zoo_dir(), exist_ok=True)
        fd, tmp = fs.mkstemp(cache.zoo_dir(), "verified.json.tmp-")
        with os.fdopen(fd, "w") as f:
            json.dump(db, f, indent=0)
        os.replace(tmp, _verified_db())
    except OSError:
        pass


def _stamp(st: os.stat_result) -> dict[str, int]:
    """What must not change for a cached digest to hold: size, mtime, inode and ctime (a
    file rewritten in place with its old mtime restored still gets a new ctime)."""
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ino": st.st_ino,
            "ctime_ns": st.st_ctime_ns}


def digests(path: str) -> dict[str, Any]:
    """`file_digests(path)`, from the verification cache while the file's size, mtime,
    inode and ctime are those recorded when it was hashed; else hashed again."""
    st = os.stat(path)
    rec = _read_db().get(os.path.realpath(path))
    if rec and all(rec.get(k) == v for k, v in _stamp(st).items()):
        return {k: rec[k] for k in ("size", "sha256", "blob")}
    d = file_digests(path)
    _remember(path, d)
    return d
