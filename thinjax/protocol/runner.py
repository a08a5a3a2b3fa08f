"""The protocol's loop: plan what is decidable, run it, keep its row, repeat.

Each run keeps ``DIR/runs/<id>/row.json`` (written atomically); a rerun skips rows whose
key (a hash of the run and the settings it reads, `RunSpec.key`) still matches, and
reruns the ones whose settings changed (reported as stale). A run that fails writes
``error.txt`` and the others go on; a trained run (not dense) that diverges (NonFiniteLoss)
is a result, a row at chance accuracy marked ``diverged``. A row's test top-1 is measured
once its LR is final (a grid run that was not chosen is never evaluated on the test split),
in one evaluate job for the rows that wait (`TEST_BATCH` of them, or all at the end).
"""

from __future__ import annotations

import json
import os
import subprocess
import time

from thinjax import fs
from thinjax.protocol import execute as ex
from thinjax.protocol import plan as planning
from thinjax.protocol.spec import Protocol, RunSpec


def code_commit() -> str:
    """The git commit of the thinjax code that runs (``+dirty`` with local edits)."""
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        head = subprocess.run(["git", "-C", here, "rev-parse", "--short=12", "HEAD"],
                              capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", here, "status", "--porcelain", "--", "."],
                               capture_output=True, text=True).stdout.strip()
        return head + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _row_path(ctx: ex.Context, spec_id: str) -> str:
    return os.path.join(ctx.workdir, "runs", spec_id, "row.json")


def _write_row(ctx: ex.Context, row: dict) -> None:
    path = _row_path(ctx, row["run"])
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump(row, f, indent=1)
    os.replace(path + ".tmp", path)


def load_rows(ctx: ex.Context, p: Protocol, specs: dict[str, RunSpec]) -> tuple[dict, list]:
    """Finished rows whose key matches their run's; the ids of stale ones."""
    rows, stale = {}, []
    root = os.path.join(ctx.workdir, "runs")
    for rid in sorted(os.listdir(root)) if os.path.isdir(root) else ():
        path = _row_path(ctx, rid)
        if ".stale-" in rid or not os.path.exists(path):
            continue
        row = fs.read_row(path)
        spec = specs.get(rid)
        if spec is not None and row.get("key") != spec.key(p, ctx.data):
            stale.append(rid)
            continue
        rows[rid] = row
    return rows, stale


def _specs(p: Protocol, rows: dict) -> dict[str, RunSpec]:
    return {r.id: r for r in planning.all_runs(p, rows)}


# rows whose test top-1 is due are evaluated together (one job) once this many wait, and
# whatever waits when the study has nothing left to run
TEST_BATCH = 8


def finalise_tests(ctx: ex.Context, p: Protocol, rows: dict, log, force: bool = True) -> None:
    """Test top-1 for every row that is final: dense, oneshot, and trained rows whose LR is
    the chosen one of their arm (all in one evaluate job; without `force`, only once
    TEST_BATCH rows wait)."""
    specs = _specs(p, rows)
    due = []
    for rid, row in sorted(rows.items()):
        spec = specs.get(rid)
        if row.get("top1") is not None or spec is None:
            continue
        if spec.arm in ("dense", "oneshot") or spec.lr == planning.chosen_lr(
                p, rows, spec.arm, spec.criterion if spec.arm != "dense+ft" else None):
            if row.get("diverged"):  # non-finite weights: chance, as on the validation split
                row["top1"], row["top5"] = row["val_top1"], row["chance_top5"]
                _write_row(ctx, row)
                log(f"{rid}: test top-1 {row['top1']:.2f}% (diverged: chance)")
            else:
                due.append((rid, spec))
    if not due or (not force and len(due) < TEST_BATCH):
        return
    for (rid, _), (top1, top5) in zip(due, ex.evaluate_tests(ctx, p, [s for _, s in due])):
        rows[rid]["top1"], rows[rid]["top5"] = top1, top5
        _write_row(ctx, rows[rid])
        log(f"{rid}: test top-1 {top1:.2f}%")


def run_all(ctx: ex.Context, p: Protocol, log=print) -> tuple[dict, list[str]]:
    """Runs every run the protocol decides on; (rows, failure messages)."""
    failed: dict[str, str] = {}
    t0 = time.perf_counter()
    while True:
        rows, stale = load_rows(ctx, p, _specs(p, load_rows(ctx, p, {})[0]))
        for rid in stale:
            old = os.path.join(ctx.workdir, "runs", rid)
            aside = fs.stale_name(old)
            os.replace(old, aside)
            log(f"{rid}: its row was made with other settings; kept in {aside}, rerunning")
        todo = planning.next_runs(p, rows, set(failed))
        finalise_tests(ctx, p, rows, log, force=not todo)
        if not todo:
            return rows, list(failed.values())
        spec = todo[0]
        log(f"[{len(rows) + 1}/{len(rows) + len(todo)}+] {spec.id}: running "
            f"(elapsed {time.perf_counter() - t0:.0f} s)")
        t = time.perf_counter()
        try:
            row = ex.execute(ctx, p, spec, rows)
        except Exception as e:  # reported; the other runs go on
            msg = f"{spec.id}: {type(e).__name__}: {e}"
            failed[spec.id] = msg
            os.makedirs(ctx.run_dir(spec), exist_ok=True)
            with open(os.path.join(ctx.run_dir(spec), "error.txt"), "w") as f:
                f.write(msg + "\n")
            log(f"{spec.id}: FAILED: {msg}")
            continue
        row["wall_s"] = round(time.perf_counter() - t, 1)
        _write_row(ctx, row)
        how = " (diverged: chance)" if row.get("diverged") else ""
        log(f"{spec.id}: val top-1 {row['val_top1']:.2f}%{how} in {row['wall_s']:.0f} s")
