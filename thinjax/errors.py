"""The errors thinjax raises for bad input, and how commands report them.

A leaf module: it imports no other thinjax module. Every error a user can cause (a wrong
config key, an unknown dataset, a corrupt checkpoint, an impossible pruning target, a
diverging run) is a :class:`ThinjaxError` whose message says what, where and how to fix
it. Commands catch these alone (`user_errors`) and print one line with exit status 2;
anything else is a bug and shows its traceback.

The subclasses also derive from the built-in exception they refine (``ValueError``,
``RuntimeError``, ``FileExistsError``), so code that caught those keeps working.
"""

from __future__ import annotations

import contextlib
import errno
import importlib
import os
import re
import sys
from collections.abc import Iterator


class ThinjaxError(Exception):
    """Bad input or a failed run that the user can fix; the message says how."""


class ConfigError(ThinjaxError, ValueError):
    """A config key or value that is unknown, out of range or inconsistent."""


class PlanError(ThinjaxError, ValueError):
    """A channel plan (or masks on it) that describes no valid network."""


class DataError(ThinjaxError, ValueError):
    """A dataset that is unknown, missing, empty or unreadable."""


class CheckpointError(ThinjaxError, ValueError):
    """A checkpoint that is missing, corrupt, not a thinjax checkpoint, or not this run's."""


class CheckpointFormatError(CheckpointError):
    """A foreign (PyTorch, safetensors, npz) file that holds no ResNet state dict."""


class TargetError(ThinjaxError, ValueError):
    """A pruning target that no network of the allowed shapes reaches."""


class TraceError(ThinjaxError, ValueError):
    """A model that `thinjax.trace` cannot prune or rebuild as asked (the message says
    which layer or option, and what to do)."""


class OutputError(ThinjaxError, FileExistsError):
    """An output path that exists, is not ours to replace, or cannot be written."""


class MissingExtra(ThinjaxError, ImportError):
    """A part of thinjax whose optional dependency is not installed (`require`)."""


def require(module: str, extra: str, part: str):
    """``import module``, or `MissingExtra` naming the pip extra that installs it (the core
    install has models, plans, cost, pruning, the zoo and checkpoints; pyproject.toml)."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        raise MissingExtra(f"{part} needs {e.name}, which is not installed: pip install "
                           f"'thinjax[{extra}]' (or 'thinjax[all]')") from None


class NonFiniteLoss(ThinjaxError, RuntimeError):
    """A training step produced a non-finite loss or gradient."""

    # in the message of every raise (train/loop.py, train/keeper.py): what a caller of the
    # train command reads in its 'error:' line to tell divergence from other failures
    PHRASES = ("non-finite loss at step", "the weights are no longer finite")


# environment faults: errno -> how to fix it (exit status 1)
ENVIRONMENT = {
    errno.ENOSPC: "free disk space there (or choose a folder on another disk), then rerun: "
                  "a run resumes from its last checkpoint",
    errno.EDQUOT: "free space in your quota there, then rerun",
    errno.EFBIG: "a file would exceed the file-size limit (ulimit -f); raise the limit or "
                 "write to another filesystem",
    errno.EMFILE: "too many open files in this process; raise the limit (ulimit -n)",
    errno.ENFILE: "too many open files on this machine; close some programs or raise the "
                  "system's limit",
    errno.EROFS: "the filesystem is read-only; choose a folder you can write to",
    errno.EACCES: "permission denied; choose a folder you can write to, or fix its "
                  "permissions",
}


def environment_fault(e: BaseException) -> OSError | None:
    """The OSError with an ENVIRONMENT errno behind `e` (itself, or a cause or context:
    libraries such as orbax re-raise I/O failures from their writer threads), or None."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in ENVIRONMENT:
            return e
        m = _TENSORSTORE.search(str(e))  # tensorstore (orbax's writer) reports errno so
        if m and int(m.group(2)) in ENVIRONMENT:
            return OSError(int(m.group(2)), os.strerror(int(m.group(2))), m.group(1))
        e = e.__cause__ or e.__context__
    return None


_TENSORSTORE = re.compile(r'local file "([^"]+)".*?os_error_code=.(\d+)', re.S)


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turns a ThinjaxError into 'error: ...' on stderr and exit status 2, and an
    environment fault (disk full, file-size or open-file limit, read-only filesystem:
    `ENVIRONMENT`) into one 'error:' line naming the path and the fix, exit status 1."""
    try:
        yield
    except ThinjaxError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except Exception as e:  # noqa: BLE001 (anything else is a bug: re-raised below)
        fault = environment_fault(e)
        if fault is None:
            raise
        where = re.sub(r"/\.([^/]+)\.tmp-[^/]*(/.*)?$", r"/\1", str(fault.filename or
                                                                  "an output"))
        print(f"error: {where}: {fault.strerror or os.strerror(fault.errno)}; "
              f"{ENVIRONMENT[fault.errno]}", file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(1)  # not sys.exit: writer threads of a failed save would print at shutdown
