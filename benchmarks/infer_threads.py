"""How thinjax's folded inference scales over threads: the release ResNet-56 w=16 (random
weights without the release), `thinjax.models.fold.forward_fn`, run back to back for
--seconds in a fresh process per measurement:

    python benchmarks/infer_threads.py [--batch=64] [--seconds=15] [--rounds=2]

* ``two threads``: the default (thinjax's inference team on every CPU of the process);
* ``one thread``: ``THINJAX_INFER_THREADS=1``;
* ``pinned pair``: two one-thread processes at once, pinned to CPUs 0 and 1 (``taskset``),
  their images/s summed: what two cores give when nothing is shared but the machine.

Rounds alternate the three. The team's own efficiency is ``two threads`` over ``one
thread``; ``pinned pair`` over ``one thread`` is what the machine allows (2.0 when the
cores do not slow each other). ``--child`` is the measuring process (also a target for
``perf record -g``).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

import jax
import numpy as np

HERE = os.path.abspath(__file__)
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))
sys.path.insert(0, os.path.dirname(HERE))

from deploy_speed import RELEASE, _release, cpu_model  # noqa: E402  (tunes the process first)

from thinjax.models.fold import forward_fn  # noqa: E402


def child(batch: int, seconds: float) -> None:
    """Prints the images/s of the forward pass run back to back for `seconds`."""
    plan, variables, _ = _release(16)
    x = jax.device_put(np.random.default_rng(0).standard_normal((batch, 32, 32, 3))
                       .astype(np.float32))
    f = forward_fn(plan, variables, x.shape)
    f(x).block_until_ready()
    start, calls = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        f(x).block_until_ready()
        calls += 1
    print(f"{batch * calls / (time.perf_counter() - start):.1f}")


def measure(mode: str, batch: int, seconds: float) -> float:
    """images/s of one measurement of `mode` (the module docstring)."""
    cmd = [sys.executable, HERE, "--child", f"--batch={batch}", f"--seconds={seconds}"]
    env = dict(os.environ)
    if not env.get("THINJAX_ZOO_DIR") and os.path.isdir(RELEASE):
        env["THINJAX_ZOO_DIR"] = RELEASE
    if mode == "two threads":
        procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env)]
    else:
        env["THINJAX_INFER_THREADS"] = "1"
        cpus = ["0"] if mode == "one thread" else ["0", "1"]
        procs = [subprocess.Popen(["taskset", "-c", c, *cmd], stdout=subprocess.PIPE,
                                  text=True, env=env) for c in cpus]
    outs = [p.communicate()[0] for p in procs]
    if any(p.returncode for p in procs):
        raise SystemExit(f"error: a measuring process failed ({mode})")
    return sum(float(o.split()[-1]) for o in outs)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        child(a.batch, a.seconds)
        return 0
    modes = ("two threads", "one thread", "pinned pair")
    got: dict[str, list[float]] = {m: [] for m in modes}
    for r in range(a.rounds):
        for m in modes:
            got[m].append(measure(m, a.batch, a.seconds))
            print(f"round {r + 1}: {m}: {got[m][-1]:.0f} img/s", flush=True)
    print(f"CPU: {cpu_model()}; ResNet-56 w=16, batch {a.batch}, {a.seconds:g} s a "
          f"measurement, {a.rounds} round(s); load average {os.getloadavg()[0]:.1f} after")
    print("| mode | img/s (each round) | median over one thread |")
    print("|---|---|---|")
    one = float(np.median(got["one thread"]))
    for m in modes:
        print(f"| {m} | {' / '.join(f'{v:.0f}' for v in got[m])} | "
              f"{np.median(got[m]) / one:.2f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
