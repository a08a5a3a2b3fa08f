"""Native libraries that print to the process's stderr with no switch to turn it off (TFLite's
"INFO: Created TensorFlow Lite XNNPACK delegate for CPU."): `stderr_without` runs a call
with file descriptor 2 captured, then writes back every line but the unwanted ones."""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator


@contextlib.contextmanager
def stderr_without(*prefixes: str) -> Iterator[None]:
    """Inside the block, what anything in the process writes to fd 2 (C++ included) is held
    back; on leaving, it is written to stderr again without the lines starting with one of
    `prefixes`. fd 2 is restored whatever happens."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            kept = [ln for ln in held.read().splitlines(keepends=True)
                    if not ln.decode(errors="replace").startswith(prefixes)]
            if kept:
                os.write(2, b"".join(kept))
