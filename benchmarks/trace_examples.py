"""thinjax.trace on the example networks: groups traced, what stays whole, MACs and params
before and after pruning to half the MACs (L1, global allocation), with and without
``inexact=True``, the Torch-Pruning comparison, and the time each step takes; prints the
Markdown table of docs/prune_any_model.md and the CPU.

    python benchmarks/trace_examples.py [--seed=0]

The models, variables (`thinjax.models.examples.random_variables`, seed 0) and input (one
32x32 image, N(0, 1), seed 0) are those of tests/test_trace_examples.py, which checks the
table's groups, MACs and params columns against its own measurements. The Torch-Pruning
column needs torch and torch-pruning (the test extra).
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np

from thinjax import trace as T
from thinjax.models.examples import ConvNeXt, MobileNetV2, UNet, ViT, random_variables

X = (1, 32, 32, 3)
EXAMPLES = {"MobileNetV2": (MobileNetV2(width=0.25), "`width=0.25`"),
            "ConvNeXt": (ConvNeXt(width=0.125), "`width=0.125`"),
            "UNet": (UNet(width=0.25), "`width=0.25`"),
            "ViT": (ViT(width=0.5, depth=2), "`width=0.5, depth=2`")}
EXTRA_ORACLE = {"MobileNetV2": MobileNetV2(width=0.5)}   # a second coupling pattern


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def oracle_cell(module, tr) -> str:
    """'equal (n groups)' or what differs, against Torch-Pruning on the PyTorch twin."""
    try:
        from thinjax.models.examples import torch_pruning_oracle as o  # torch: optional
    except Exception:  # noqa: BLE001 (torch or torch-pruning missing)
        return "not run (needs torch, torch-pruning)"
    traced = set()
    for g in tr.groups.values():
        traced.add(frozenset((f"{s.col}/{s.path}", s.axis, int(s.rows[0, 0]),
                              int(s.rows[0, 0]) + g.size) for s in g.slices))
    theirs = o.oracle_groups(module, X)
    if traced == theirs:
        return f"equal ({len(theirs)} groups)"
    return f"differ: {len(traced - theirs)} traced only, {len(theirs - traced)} theirs only"


def row(name: str, seed: int) -> tuple[str, dict[str, float]]:
    module, config = EXAMPLES[name]
    v = random_variables(module, X, seed)
    x = np.random.default_rng(seed).standard_normal(X).astype(np.float32)
    t0 = time.perf_counter()
    tr = T.trace(module, v, x, train=False)
    t1 = time.perf_counter()
    _, _, r = T.prune(module, v, x, criterion="l1", target=0.5, target_kind="macs_fraction",
                      apply_kwargs={"train": False})
    t2 = time.perf_counter()
    _, _, ri = T.prune(module, v, x, criterion="l1", target=0.5, target_kind="macs_fraction",
                       apply_kwargs={"train": False}, inexact=True)
    if type(module) in (MobileNetV2, ConvNeXt, UNet):
        cells = [oracle_cell(module, tr)]
        if name in EXTRA_ORACLE:
            extra = EXTRA_ORACLE[name]
            cells.append("at `width=0.5`: " + oracle_cell(
                extra, T.trace(extra, random_variables(extra, X, seed), x, train=False)))
        tp = "; ".join(cells)
    else:
        tp = "no twin"
    t3 = time.perf_counter()
    whole = ", ".join(f"{n} ({tr.groups[n].size})" for n in sorted(r.inexact)) or "none"
    inexact = (f"{ri.pruned.macs:,} ({ri.pruned.macs / ri.dense.macs:.3f}), "
               f"{ri.max_abs_diff:.2g}" if ri.inexact != r.inexact or r.inexact else "same")
    cells = [f"{name} {config}", f"{len(tr.groups)} ({len(tr.groups) - len(r.inexact)} exact)",
             whole, f"{r.dense.macs:,} → {r.pruned.macs:,}",
             f"{r.dense.params:,} → {r.pruned.params:,}", inexact, tp]
    times = {"trace_s": t1 - t0, "prune_s": t2 - t1, "rest_s": t3 - t2}
    return "| " + " | ".join(cells) + " |", times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    print("| model | groups traced | left whole (`inexact=False`) | MACs dense → pruned | "
          "params dense → pruned | `inexact=True`: MACs, max \\|pruned − masked\\| | "
          "Torch-Pruning's groups |")
    print("|---|---|---|---|---|---|---|")
    times = {}
    for name in EXAMPLES:
        line, times[name] = row(name, args.seed)
        print(line, flush=True)
    print(f"\nCPU: {cpu_name()}")
    for name, t in times.items():
        print(f"{name}: " + ", ".join(f"{k} {s:.2f}" for k, s in t.items()))


if __name__ == "__main__":
    main()
