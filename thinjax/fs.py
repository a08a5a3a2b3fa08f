"""Paths that may be local or remote (gs://, s3://, ...): run directories on a pod live in
a bucket. Remote paths go through etils.epath (which uses tf.io.gfile / fsspec); local ones
stay plain os paths."""

from __future__ import annotations

import os


def is_remote(path: str) -> bool:
    return "://" in str(path)


def absolute(path: str) -> str:
    return str(path) if is_remote(path) else os.path.abspath(path)


def _p(path: str):
    from etils import epath
    return epath.Path(path)


def exists(path: str) -> bool:
    return _p(path).exists() if is_remote(path) else os.path.exists(path)


def isdir(path: str) -> bool:
    return _p(path).is_dir() if is_remote(path) else os.path.isdir(path)


def makedirs(path: str) -> None:
    if is_remote(path):
        _p(path).mkdir(parents=True, exist_ok=True)
    else:
        os.makedirs(path, exist_ok=True)


def read_text(path: str) -> str:
    if is_remote(path):
        return _p(path).read_text()
    with open(path) as f:
        return f.read()


def write_text(path: str, text: str) -> None:
    """Whole-file write; local files are replaced atomically (write, then rename)."""
    if is_remote(path):
        _p(path).write_text(text)
        return
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def rmtree(path: str) -> None:
    if is_remote(path):
        _p(path).rmtree()
    else:
        import shutil
        shutil.rmtree(path)
