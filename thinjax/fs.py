"""Paths that may be local or remote (gs://, s3://, ...): run directories on a pod live in
a bucket. Remote paths go through etils.epath (which uses tf.io.gfile / fsspec); local ones
stay plain os paths.

Also what every command that writes shares: `check_replaceable` (``--overwrite`` replaces
only what thinjax wrote, never an input), `atomic_dir` (an output directory appears whole
or not at all) and `writing` (a permission problem is one error line naming the path)."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
import time
from typing import Callable, Iterable, Iterator

from thinjax.errors import OutputError


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
        shutil.rmtree(path)


# -- outputs: what --overwrite may replace, atomic writes, permission errors ------------

MARKER = ".thinjax-output"  # written into every directory a thinjax command creates
_CONVERT_LAYOUT = {"model", "plan.json", "config.py", "summary.json"}


def _inside(a: str, b: str) -> bool:
    """Whether path `a` lies strictly inside directory `b` (both real paths)."""
    return a != b and os.path.commonpath([a, b]) == b


def check_not_input(output: str, sources: Iterable[str], flag: str = "--output") -> None:
    """Refuses an output equal to, inside, or containing an input (local paths)."""
    if is_remote(output):
        return
    out = os.path.realpath(output)
    for src in sources:
        if not src or is_remote(src) or not os.path.exists(src):
            continue
        s = os.path.realpath(src)
        how = ("is the input" if out == s else "lies inside the input" if _inside(out, s)
               else "contains the input" if _inside(s, out) else None)
        if how:
            raise OutputError(f"{flag}={output} {how} {src}; writing it would destroy what "
                              f"is being read. Choose an {flag} outside the input")


def is_thinjax_output(path: str) -> bool:
    """A directory a thinjax command wrote: it holds the marker file, or the layout of a
    model checkpoint (numbered steps with meta/ and state/) or of a convert output."""
    if is_remote(path):
        return exists(os.path.join(path, MARKER))
    if os.path.islink(path) or not os.path.isdir(path):
        return False
    names = set(os.listdir(path))
    if MARKER in names:
        return True
    if names and all(n.isdigit() and os.path.isdir(os.path.join(path, n, "meta"))
                     for n in names):
        return True
    return {"model", "plan.json"} <= names <= _CONVERT_LAYOUT


def check_replaceable(output: str, sources: Iterable[str] = (), overwrite: bool = False,
                      recognise: Callable[[str], bool] = is_thinjax_output,
                      kind: str = "a thinjax output directory", flag: str = "--output") -> None:
    """Refuses an output that is an input (or inside or around one), that exists without
    `overwrite`, or that exists but is not recognisably thinjax's (`recognise`): nothing a
    user made is ever replaced."""
    check_not_input(output, sources, flag)
    if not (exists(output) or os.path.islink(output)):
        return
    if not overwrite:
        raise OutputError(f"{output} exists; choose another {flag} or pass --overwrite")
    if os.path.islink(output) or not recognise(output):
        raise OutputError(f"{output} exists and is not {kind}; --overwrite replaces only "
                          f"what thinjax wrote. Choose another {flag}, or move it away "
                          "yourself")


@contextlib.contextmanager
def atomic_dir(output: str) -> Iterator[str]:
    """Yields a new directory beside `output` to fill; when the block succeeds it is marked
    as thinjax's and renamed to `output` (an old `output` is removed only once the new one
    is in place); when it fails it is removed. Remote (gs://): written in place."""
    if is_remote(output):
        if exists(output):
            rmtree(output)
        makedirs(output)
        yield output
        _p(os.path.join(output, MARKER)).write_text("thinjax\n")
        return
    parent = os.path.dirname(os.path.abspath(output))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(output)}.tmp-", dir=parent)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp's 0700 would outlive the rename
        yield tmp
        with open(os.path.join(tmp, MARKER), "w") as f:
            f.write("thinjax\n")
        old = None
        if os.path.lexists(output):
            old = tmp + ".old"
            os.replace(output, old)
        os.replace(tmp, output)
        if old:
            shutil.rmtree(old)
    except BaseException:
        _remove_tree(tmp)
        raise


def _remove_tree(path: str, tries: int = 10) -> None:
    """rmtree that outlasts a writer still finishing (a library's I/O thread may add a file
    while the tree is being removed; seen once under load with orbax)."""
    for _ in range(tries):
        shutil.rmtree(path, ignore_errors=True)
        if not os.path.lexists(path):
            return
        time.sleep(0.1)


@contextlib.contextmanager
def writing(path: str, fix: str = "choose an output you can write to") -> Iterator[None]:
    """Turns a permission or read-only-filesystem error into one OutputError line naming
    the path."""
    try:
        yield
    except OSError as e:
        if not (isinstance(e, PermissionError) or e.errno == errno.EROFS):
            raise
        where = str(e.filename or path)
        if ".tmp-" in os.path.basename(where):  # our temporary file or directory: its place
            where = os.path.dirname(where)
        raise OutputError(f"{where}: {e.strerror or 'permission denied'}; {fix}, or fix its "
                          "permissions") from e


@contextlib.contextmanager
def undo_created(directory: str, keep: Callable[[], bool] = lambda: False) -> Iterator[None]:
    """If the block fails and `keep()` is false, removes what the block created in the
    local `directory` (and `directory` itself if the block created it); entries that were
    there before are never touched."""
    directory = absolute(directory)
    local = not is_remote(directory)
    before = set(os.listdir(directory)) if local and os.path.isdir(directory) else None
    try:
        yield
    except BaseException:
        if local and os.path.isdir(directory) and not keep():
            for name in set(os.listdir(directory)) - (before or set()):
                p = os.path.join(directory, name)
                if os.path.isdir(p) and not os.path.islink(p):
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    os.remove(p)
            if before is None and not os.listdir(directory):
                os.rmdir(directory)
        raise
