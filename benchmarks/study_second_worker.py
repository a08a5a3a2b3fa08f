"""A second worker beside a running protocol study, on a 2-core CPU (how the last 19 runs of
the R20 protocol study were scheduled on 2026-12-08).

    python benchmarks/study_second_worker.py --config=configs/study_cifar10_r20_protocol.py \\
        --workdir=DIR --data=DATA --study_pid=PID

PID is the running `thinjax.study` process of the same DIR (its loop, not its jobs). Run it
from the same clone as the study (the rows name that clone's commit). It runs the same runs
as the study would (`plan.next_runs`, `execute.execute`, the row written as `runner.run_all`
writes it): none of their numbers depend on which process made them. It moves the study's
next jobs to core 0 and makes its own on core 1 (one core each: on the 2-core Intel Xeon a
run takes ~1.3-1.6x its two-core time, so two at once finish the queue sooner). It takes the
last run of the queue nobody began:
* when the runs the study must make first take well over this run's time (estimated per arm,
  `EST`), it simply runs it;
* otherwise (the queue's last runs) it stops the study's loop (SIGSTOP to PID alone: its
  current job goes on) for as long as its own run lasts, so the study never begins the same
  run; the study's current row then counts the stopped time in its `wall_s`.
It exits when the queue is empty; the study evaluates the test split as always.
"""

from __future__ import annotations

import argparse
import os
import runpy
import signal
import time

import ml_collections

from thinjax.protocol import execute as ex
from thinjax.protocol import from_config
from thinjax.protocol import plan as planning
from thinjax.protocol.runner import _specs, _write_row, code_commit, load_rows

# one-core seconds per run of each arm, generous (the R20 study's arms on the Intel Xeon)
EST = {"dense+ft": 330, "gradual": 420, "scratch-E": 420, "scratch-B": 1000,
       "pruned+ft": 300, "thin": 400, "dense": 400, "oneshot": 100}


def log(m: str) -> None:
    print(time.strftime("%H:%M:%S"), m, flush=True)


def study_jobs_on_core0(pid: int) -> None:
    """Waits until every job of the study runs on core 0 alone (a job keeps the cores it
    started with; the next inherits {0})."""
    while True:
        try:
            with open(f"/proc/{pid}/task/{pid}/children") as f:
                kids = [int(x) for x in f.read().split()]
        except OSError:
            kids = []
        busy = []
        for c in kids:
            try:
                if os.sched_getaffinity(c) != {0}:
                    busy.append(c)
            except OSError:
                pass
        if not busy:
            return
        log(f"waiting for the study's job {busy} (started on both cores) to end")
        while any(os.path.exists(f"/proc/{c}") for c in busy):
            time.sleep(5)


def run(ctx, p, spec, rows, how: str) -> None:
    log(f"{spec.id}: running {how}")
    t = time.perf_counter()
    row = ex.execute(ctx, p, spec, rows)
    row["wall_s"] = round(time.perf_counter() - t, 1)
    _write_row(ctx, row)
    log(f"{spec.id}: val top-1 {row['val_top1']:.2f}% in {row['wall_s']:.0f} s")


def work(ctx, p, pid: int) -> None:
    while True:
        rows, stale = load_rows(ctx, p, _specs(p, load_rows(ctx, p, {})[0]))
        todo = planning.next_runs(p, rows, set())
        if not todo or stale:
            os.sched_setaffinity(pid, {0, 1})
            log("nothing left: done" if not todo else f"stale rows {stale}: stopping")
            return
        unbegun = [i for i, t in enumerate(todo) if not os.path.exists(ctx.run_dir(t))]
        i = unbegun[-1] if unbegun else 0
        if i < 1:  # the study makes the last one
            time.sleep(20)
            continue
        spec = todo[i]
        ahead = sum(EST[t.arm] for t in todo[1:i] if not os.path.exists(ctx.run_dir(t)))
        os.sched_setaffinity(pid, {0})
        if i >= 3 and ahead >= 1.5 * EST[spec.arm]:
            study_jobs_on_core0(pid)
            run(ctx, p, spec, rows, f"(queue {len(todo)})")
            continue
        if not os.path.exists(ctx.run_dir(todo[0])):
            time.sleep(10)  # the study is between runs: let it take its next one
            continue
        os.kill(pid, signal.SIGSTOP)
        try:
            if not os.path.exists(ctx.run_dir(spec)):
                run(ctx, p, spec, rows, f"(queue {len(todo)}; the study's loop stopped)")
        finally:
            os.kill(pid, signal.SIGCONT)
        time.sleep(20)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", required=True)
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--data", required=True, help="the study's --config.data.name")
    ap.add_argument("--study_pid", type=int, required=True)
    a = ap.parse_args()
    cfg = ml_collections.ConfigDict(runpy.run_path(a.config)["get_config"]())
    os.sched_setaffinity(0, {1})
    ctx = ex.Context(os.path.abspath(a.workdir), a.data, None,
                     int(cfg.data.eval_batch_size), code_commit())
    log(f"commit {ctx.commit}")
    work(ctx, from_config(cfg.protocol), a.study_pid)


if __name__ == "__main__":
    main()
