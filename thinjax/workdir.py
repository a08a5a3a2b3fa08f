"""A run's workdir: whose it is, and who may use it.

A workdir is thinjax's when it holds `WORKDIR_MARKER` (written on a run's first start), a
thinjax ``config.json`` (workdirs made before the marker) or thinjax checkpoints copied
into it; any other non-empty folder is refused before anything is written
(`check_workdir`). `locked` holds an exclusive lock on it for one process at a time.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator

from thinjax.errors import OutputError
from thinjax.fs import is_remote, is_thinjax_output

WORKDIR_MARKER = ".thinjax-workdir"   # in every training/evaluation workdir
LOCK = ".thinjax-lock"                # the workdir lock's file (flock; pid inside)
_RUN_KEYS = {"model", "data", "train", "optim"}  # a thinjax config.json has these


def _is_thinjax_config(path: str) -> bool:
    try:
        with open(path) as f:
            return _RUN_KEYS <= set(json.load(f))
    except (OSError, ValueError, TypeError):
        return False


def check_workdir(path: str, flag: str = "--workdir") -> None:
    """Refuses a workdir that is a file, or a non-empty folder that thinjax did not make
    (no workdir marker, no thinjax config.json): training there would replace a user's
    files. Nothing is written."""
    if is_remote(path):
        return
    if not path:
        raise OutputError(f"{flag} is empty; give a folder for the run's outputs")
    if os.path.lexists(path) and not os.path.isdir(path):
        raise OutputError(f"{flag}={path} is a file, not a folder; choose a new {flag}")
    names = set(os.listdir(path)) if os.path.isdir(path) else set()
    if not names or WORKDIR_MARKER in names:
        return
    if "config.json" in names and _is_thinjax_config(os.path.join(path, "config.json")):
        return  # a workdir made before the marker existed
    if "checkpoints" in names and is_thinjax_output(os.path.join(path, "checkpoints")):
        return  # thinjax checkpoints copied into a new folder (to resume them elsewhere)
    what = ", ".join(sorted(names)[:4]) + (" ..." if len(names) > 4 else "")
    raise OutputError(f"{flag}={path} is a folder thinjax did not make (it holds {what}); "
                      f"nothing was written. Choose a new or empty {flag}")


def mark_workdir(path: str) -> None:
    if not is_remote(path) and not os.path.exists(os.path.join(path, WORKDIR_MARKER)):
        with open(os.path.join(path, WORKDIR_MARKER), "w") as f:
            f.write("thinjax\n")


@contextlib.contextmanager
def locked(directory: str, flag: str = "--workdir") -> Iterator[None]:
    """An exclusive lock on `directory` for the block (one process per workdir): a second
    process gets one OutputError naming the holder's pid. The kernel releases it when the
    holder exits, however it exits, so a dead process's lock is never in the way."""
    if is_remote(directory):
        yield
        return
    path = os.path.join(directory, LOCK)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise OutputError(f"{flag}={directory} is in use by another thinjax process (pid "
                          f"{holder}); one process per {flag}: wait for it to end, stop it, "
                          "or choose another folder") from None
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)
