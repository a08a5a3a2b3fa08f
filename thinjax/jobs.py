"""Jobs: a thinjax command run in its own process, the one way a study runs anything.

A `Job` names a command (``train``: ``python -m thinjax.main``, ``prune``, ``evaluate``),
its flags and a log file; `run` starts it with ``--json``, appends its stdout and stderr to
the log and returns the result the command printed as JSON on its last stdout line. Every
kind of study run (training, one-shot pruning, fine-tuning, evaluation) is a job, so each
one runs exactly as a user would run it by hand (the log's first line is the command), in
a fresh process that gives its memory back when it ends.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

from thinjax.errors import ThinjaxError

# the command of each job kind (the documented entry points; thinjax.main is train's)
MODULES = {"train": "thinjax.main", "prune": "thinjax.commands.prune",
           "evaluate": "thinjax.commands.evaluate"}


class JobFailed(ThinjaxError, RuntimeError):
    """A job whose command exited with an error; `returncode` and the log's `tail`."""

    def __init__(self, message: str, returncode: int, tail: str):
        super().__init__(message)
        self.returncode, self.tail = returncode, tail


@dataclasses.dataclass(frozen=True)
class Job:
    command: str               # a key of MODULES
    flags: tuple[str, ...]
    log: str                   # stdout and stderr are appended here

    def __post_init__(self):
        if self.command not in MODULES:
            raise ValueError(f"job command {self.command!r}: use one of {', '.join(MODULES)}")

    def argv(self) -> list[str]:
        return [sys.executable, "-m", MODULES[self.command], *self.flags, "--json"]


def last_json(text: str) -> dict | None:
    """The last line of `text` that is a JSON object (a command's ``--json`` result)."""
    for line in reversed(text.splitlines()):
        if line.startswith("{"):
            try:
                out = json.loads(line)
            except ValueError:
                continue
            if isinstance(out, dict):
                return out
    return None


def run(job: Job, env: dict[str, str] | None = None) -> dict:
    """Runs `job` to its end; its JSON result. Raises `JobFailed` (the log named) when the
    command exits with an error or prints no result."""
    os.makedirs(os.path.dirname(os.path.abspath(job.log)), exist_ok=True)
    start = os.path.getsize(job.log) if os.path.exists(job.log) else 0
    with open(job.log, "a") as log:
        print("+", " ".join(job.argv()[1:]), file=log, flush=True)
        r = subprocess.run(job.argv(), stdout=log, stderr=subprocess.STDOUT, env=env)
    with open(job.log, errors="replace") as f:
        f.seek(start)
        text = f.read()
    result = last_json(text) if r.returncode == 0 else None
    if result is None:
        why = f"exited {r.returncode}" if r.returncode else "printed no result"
        raise JobFailed(f"{MODULES[job.command]} {why}; see {job.log}", r.returncode,
                        text[-4000:])
    return result
