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
import sys
from typing import Iterator


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


class OutputError(ThinjaxError, FileExistsError):
    """An output path that exists, is not ours to replace, or cannot be written."""


class NonFiniteLoss(ThinjaxError, RuntimeError):
    """A training step produced a non-finite loss or gradient."""


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turns a ThinjaxError into 'error: ...' on stderr and exit status 2."""
    try:
        yield
    except ThinjaxError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
