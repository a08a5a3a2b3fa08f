"""Paths that may be local or remote (gs://, s3://, ...): run directories on a pod live in
a bucket. Remote paths go through etils.epath (which uses tf.io.gfile / fsspec); local ones
stay plain os paths.

Also what every command that writes shares: `check_replaceable` (``--overwrite`` replaces
only what thinjax wrote, never an input), `atomic_dir` (an output directory appears whole
or not at all) and `writing` (a permission problem is one error line naming the path)."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator

from thinjax.errors import OutputError


def is_remote(path: str) -> bool:
    return "://" in str(path)


def absolute(path: str) -> str:
    return str(path) if is_remote(path) else os.path.abspath(path)


def _p(path: str):
    from etils import epath  # heavy, optional: remote (gs://) paths only
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
    try:
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:  # a full disk or a file-size limit: no half-written file left
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def umask() -> int:
    """The process's umask (read by setting it back at once)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def mkstemp(directory: str, prefix: str, suffix: str = "", mode: int = 0o666) -> tuple[int, str]:
    """`tempfile.mkstemp` in `directory` whose file has the permissions of any new file
    (`mode` less the umask), not mkstemp's 0600, which would outlive the rename into place
    (cache files stay readable by the group)."""
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=directory)
    os.fchmod(fd, mode & ~umask())
    return fd, tmp


def stale_name(path: str) -> str:
    """Where a run folder made with other settings is kept when it is rerun (never
    deleted): ``PATH.stale-<time>-<ns>``, unique."""
    return f"{path}.stale-{time.strftime('%Y%m%d-%H%M%S')}-{time.time_ns() % 10**9:09d}"


def read_row(path: str) -> dict:
    """A finished run's record (a study's row.json); a file that is not a JSON object is one
    OutputError naming it and the fix."""
    try:
        with open(path) as f:
            row = json.load(f)
        if isinstance(row, dict):
            return row
        raise ValueError("not a JSON object")
    except (OSError, ValueError) as e:
        raise OutputError(f"{path}: a finished run's record cannot be read ({e}); delete the "
                          f"folder {os.path.dirname(path)} to run it again") from None


def rmtree(path: str) -> None:
    if is_remote(path):
        _p(path).rmtree()
    else:
        shutil.rmtree(path)


# -- outputs: what --overwrite may replace, atomic writes, permission errors ------------

MARKER = ".thinjax-output"  # written into every directory a thinjax command creates
_CONVERT_LAYOUT = {"model", "plan.json", "config.py", "finetune.json", "summary.json"}


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


_RENAME_EXCHANGE = 2  # linux/fs.h


def exchange(a: str, b: str) -> bool:
    """Swaps two existing paths in one atomic step (Linux renameat2 RENAME_EXCHANGE); False
    where the system or filesystem cannot (then nothing was changed)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    AT_FDCWD = -100
    rc = fn(AT_FDCWD, os.fsencode(a), AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), a)


def _step(name: str) -> None:
    """A point between two filesystem operations of `atomic_dir` (tests stop a process
    here to check that every instant leaves the old or the new output whole)."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_leftovers(output: str) -> list[str]:
    """Removes what an interrupted `atomic_dir` of `output` left beside it (hidden
    ``.NAME.tmp-PID-*`` folders of processes that no longer run; never another process's
    unfinished write); if `output` itself is missing and a finished new copy was left,
    it is moved into place first. Returns what was removed or restored."""
    parent, base = os.path.split(os.path.abspath(output))
    prefix, done = f".{base}.tmp-", []
    if not os.path.isdir(parent):
        return done
    for name in sorted(os.listdir(parent)):
        if not name.startswith(prefix):
            continue
        pid = name[len(prefix):].split("-", 1)[0]
        if not pid.isdigit() or _pid_alive(int(pid)):
            continue
        path = os.path.join(parent, name)
        complete = os.path.exists(os.path.join(path, MARKER)) and not name.endswith(".old")
        if complete and not os.path.lexists(output):
            os.replace(path, output)  # the new output was whole; only its rename was left
            done.append(f"restored {output}")
            continue
        _remove_tree(path)
        done.append(f"removed {path}")
    return done


@contextlib.contextmanager
def atomic_dir(output: str) -> Iterator[str]:
    """Yields a new directory beside `output` to fill; when the block succeeds it is marked
    as thinjax's and put in place of `output` in one atomic step (an exchange of the two
    names where the system has one; the old output is removed after). At every instant
    `output` is the old or the new directory, whole; a folder left by a killed process is
    cleaned up (or, if it was the finished new output and `output` is missing, moved into
    place) by the next `atomic_dir` of the same output. On failure the new directory is
    removed. Remote (gs://): written in place."""
    if is_remote(output):
        if exists(output):
            rmtree(output)
        makedirs(output)
        yield output
        _p(os.path.join(output, MARKER)).write_text("thinjax\n")
        return
    output = os.path.abspath(output)
    parent = os.path.dirname(output)
    os.makedirs(parent, exist_ok=True)
    clean_leftovers(output)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(output)}.tmp-{os.getpid()}-",
                           dir=parent)
    try:
        os.chmod(tmp, 0o777 & ~umask())  # mkdtemp's 0700 would outlive the rename
        _step("created")
        yield tmp
        with open(os.path.join(tmp, MARKER), "w") as f:
            f.write("thinjax\n")
        _step("filled")
        _put_in_place(tmp, output)
    except BaseException:
        _remove_tree(tmp)
        raise


def _put_in_place(tmp: str, output: str) -> None:
    """`tmp` becomes `output` atomically; the old `output` (now at `tmp`) is removed."""
    if os.path.lexists(output) and exchange(tmp, output):
        _step("exchanged")
        _remove_tree(tmp)
        return
    if os.path.lexists(output):  # no atomic exchange here: the old one aside, briefly
        old = tmp + ".old"
        os.replace(output, old)
        _step("old aside")
        os.replace(tmp, output)
        _step("renamed")
        shutil.rmtree(old)
        return
    os.replace(tmp, output)
    _step("renamed")


def remove_unfinished_checkpoints(directory: str) -> list[str]:
    """Removes the temporary folders of checkpoint writes that did not finish (orbax's
    ``*.orbax-checkpoint-tmp*``) in a run's checkpoint folder: after a failed run they
    only take space (a full disk's worth, after a disk-full error)."""
    if is_remote(directory) or not os.path.isdir(directory):
        return []
    gone = [os.path.join(directory, n) for n in os.listdir(directory)
            if ".orbax-checkpoint-tmp" in n]
    for p in gone:
        _remove_tree(p)
    return gone


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
        if e.filename is None and e.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
            raise OSError(e.errno, e.strerror, path) from e  # name the output it was for
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
