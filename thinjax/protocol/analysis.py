"""From protocol rows to comparisons: the paired differences against the thin arm.

Pure functions of the rows (dicts as in results.csv), so that every verdict of a report
can be recomputed from its CSV alone (tests/test_protocol.py does, on the committed one).
"""

from __future__ import annotations

import csv
import math
import statistics

from thinjax import report, stats
from thinjax.protocol import plan as planning

COLUMNS = ("run", "arm", "target", "target_macs", "criterion", "seed", "E", "T", "lr",
           "selection", "epochs_here", "epochs_total", "images", "train_flops", "params",
           "macs", "val_top1", "val_top1_no_recal", "top1", "top5", "diverged", "wall_s", "commit",
           "key")
_INTS = ("target_macs", "seed", "images", "train_flops", "params", "macs")
_FLOATS = ("E", "T", "lr", "epochs_here", "epochs_total", "val_top1", "val_top1_no_recal",
           "top1", "top5", "wall_s")
COMPARED = ("pruned+ft", "gradual", "scratch-E", "scratch-B")


def write_csv(path: str, rows: list[dict]) -> None:
    report.write_csv(path, sorted(rows, key=lambda r: r["run"]), COLUMNS)


def read_csv(path: str) -> list[dict]:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        for k in _INTS:
            r[k] = int(float(r[k])) if r.get(k) not in (None, "") else None
        for k in _FLOATS:
            r[k] = float(r[k]) if r.get(k) not in (None, "") else None
        r["selection"] = r.get("selection") == "True"
        r["diverged"] = {"True": True, "False": False}.get(r.get("diverged") or "")  # or None
        r["criterion"] = r.get("criterion") or None
    return rows


def chosen_lrs(rows: list[dict]) -> dict[tuple, float]:
    """(arm, criterion) -> the LR its grid chose: the selection row with the best validation
    top-1, ties to the smaller LR (`thinjax.protocol.plan.chosen_lr`, from rows alone)."""
    grids: dict[tuple, list] = {}
    for r in rows:
        if r.get("selection") and r.get("val_top1") is not None:
            grids.setdefault((r["arm"], r.get("criterion")), []).append((r["lr"], r["val_top1"]))
    return {k: planning.best_lr(g) for k, g in grids.items()}


def final(rows: list[dict]) -> list[dict]:
    """The rows that are reported: measured on the test split, at the LR their arm's grid
    chose. (A grid run is measured on the test split only while its LR is the chosen one:
    a row measured before its grid was extended and lost its place stays in results.csv
    but is not reported.)"""
    chosen = chosen_lrs(rows)
    return [r for r in rows if r.get("top1") is not None and
            (r.get("lr") is None or chosen.get((r["arm"], r.get("criterion"))) in
             (None, r["lr"]))]


def arm_name(r: dict) -> str:
    return r["arm"] + (f" {r['criterion']}" if r.get("criterion") else "")


def by_seed(rows: list[dict], arm: str, target: str, E: float) -> dict[int, float]:
    return {r["seed"]: r["top1"] for r in rows
            if arm_name(r) == arm and r["target"] == target and r["E"] == E}


def family(target: str, E: float) -> str:
    """The label of the comparisons at one target and fine-tune budget (Holm's family)."""
    return f"{target}, E={E:g}"


def family_parts(label: str) -> tuple[str, float]:
    """`family`'s inverse: (target, E)."""
    target, E = label.rsplit(", E=", 1)
    return target, float(E)


def comparisons(rows: list[dict], delta: float) -> list[stats.Comparison]:
    """Every trained arm against thin at each (target, E) where both have paired seeds;
    Holm over the arms of one (target, E) family."""
    rows = final(rows)
    out = []
    keys = sorted({(r["target"], r["E"]) for r in rows if r["arm"] == "thin"},
                  key=lambda k: (k[0], k[1]))
    for target, E in keys:
        ref = by_seed(rows, "thin", target, E)
        pairs = {}
        names = sorted({arm_name(r) for r in rows if r["arm"] in COMPARED
                        and r["target"] == target and r["E"] == E})
        for name in names:
            x = by_seed(rows, name, target, E)
            seeds = sorted(set(x) & set(ref))
            if len(seeds) >= 2:
                pairs[name] = ([x[s] for s in seeds], [ref[s] for s in seeds])
        if pairs:
            out += stats.compare_family(family(target, E), pairs, delta)
    return out


def arm_summary(rows: list[dict]) -> list[dict]:
    """Per (arm, criterion, target, E): n, mean and sd of test top-1 and the budget."""
    groups: dict[tuple, list[dict]] = {}
    for r in final(rows):
        groups.setdefault((arm_name(r), r["target"], r["E"]), []).append(r)
    out = []
    for (name, target, E), g in sorted(groups.items(), key=lambda kv: (kv[0][1], kv[0][2],
                                                                        kv[0][0])):
        t = [r["top1"] for r in g]
        out.append({"arm": name, "target": target, "E": E, "n": len(g),
                    "mean": statistics.mean(t), "sd": statistics.stdev(t) if len(t) > 1
                    else math.nan, "lr": g[0]["lr"], "epochs_total": g[0]["epochs_total"],
                    "images": g[0]["images"], "train_flops": g[0]["train_flops"],
                    "params": statistics.mean(r["params"] for r in g),
                    "macs": statistics.mean(r["macs"] for r in g),
                    "val": statistics.mean(r["val_top1"] for r in g),
                    "wall_s": statistics.median(r["wall_s"] or 0 for r in g)})
    return out
