"""Progress of a long loop (an evaluation, a download): tqdm's bar on a terminal; anywhere
else (a log file, a pipe, a job scheduler's capture) a plain line every `every_s` seconds
and one at the end, with no carriage-return frames.

    with progress_bar(total=10_000, unit="img", desc="eval") as bar:
        for batch in batches:
            ...
            bar.update(len(batch))
"""

from __future__ import annotations

import os
import sys
import time
from typing import IO, Any

from tqdm import tqdm

EVERY_S = 30.0  # between plain lines


class Lines:
    """tqdm's `update`/`close` (and context manager) as plain lines on `stream`: one when
    `every_s` seconds have passed since the last, and a last one on close if any was
    printed (a short loop prints nothing)."""

    def __init__(self, total: int | None, unit: str, desc: str, stream: IO[str],
                 every_s: float = EVERY_S, clock=time.monotonic):
        self.total, self.unit, self.desc, self.stream = total, unit, desc, stream
        self.every_s, self.clock, self.n, self.printed = every_s, clock, 0, 0
        self.start = self.last = clock()

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.clock() - self.last >= self.every_s:
            self._line()

    def close(self) -> None:
        if self.printed > 0:
            self._line()
        self.printed = -1  # closed: a second close prints nothing

    def _line(self) -> None:
        now = self.clock()
        self.last, self.printed = now, self.printed + 1
        done = f"{self.n:,}/{self.total:,}" if self.total else f"{self.n:,}"
        pct = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        rate = self.n / max(now - self.start, 1e-9)
        print(f"{self.desc}: {done} {self.unit}{pct}, {rate:,.0f} {self.unit}/s",
              file=self.stream, flush=True)

    def __enter__(self) -> Lines:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def is_terminal(stream: IO[str]) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False


def progress_bar(total: int | None, unit: str, desc: str, enabled: bool = True,
                 stream: IO[str] | None = None, every_s: float = EVERY_S,
                 **tqdm_options: Any) -> tqdm | Lines:
    """tqdm's bar when `stream` (stderr by default) is a terminal, else `Lines`; nothing at
    all when not `enabled`. `tqdm_options` (unit_scale, mininterval, leave...) go to tqdm."""
    stream = sys.stderr if stream is None else stream
    if enabled and not is_terminal(stream):
        return Lines(total, unit, desc, stream, every_s)
    return tqdm(total=total, unit=unit, desc=desc, disable=not enabled, file=stream,
                **tqdm_options)


def process_seconds() -> float | None:
    """Seconds since this process started (Linux: its start time in /proc against the
    uptime); None where that cannot be read."""
    try:
        with open("/proc/self/stat") as f:
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return round(uptime - start_ticks / os.sysconf("SC_CLK_TCK"), 3)
