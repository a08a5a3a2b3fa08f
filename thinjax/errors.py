"""One way for commands to turn known bad input into a one-line message and exit code 2."""

from __future__ import annotations

import contextlib
import sys


@contextlib.contextmanager
def user_errors():
    """Known bad-input errors print 'error: ...' to stderr and exit 2; others propagate."""
    from thinjax.checkpoint import CheckpointError
    from thinjax.data.sources import DataError
    from thinjax.interop.torch import CheckpointFormatError
    from thinjax.plan import PlanError
    from thinjax.train.loop import NonFiniteLoss
    try:
        yield
    except (PlanError, DataError, CheckpointError, CheckpointFormatError, FileNotFoundError,
            FileExistsError, ValueError, NonFiniteLoss) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
