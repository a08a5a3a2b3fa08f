"""Which runs the protocol makes, as a pure function of its settings and finished rows.

Some runs depend on what earlier runs measured on the validation split: each trained arm's
peak LR is the grid value with the best validation top-1 (seed 0, first target, ref E), the
E curve runs for the best `curve_criteria` criteria, and gradual / scratch arms use the best
criterion. `next_runs` therefore plans what is decidable now; the runner calls it again
after every run until nothing is left. The test split is never read to decide anything.

Runs come in tiers, so that a study stopped early holds whole comparisons: (0) the dense
networks, their one-shot prunings and the LR selection of thin and pruned+ft; (1) thin and
pruned+ft at ref E for every seed; (2) the E curve; (3) the controls (dense+ft, gradual,
scratch-E, scratch-B). Within a tier, seed by seed.
"""

from __future__ import annotations

import math

from thinjax.protocol.spec import Protocol, RunSpec

CONTROLS = ("gradual", "scratch-E", "scratch-B")

Rows = dict  # run id -> row (dict with at least val_top1)


def selection_runs(p: Protocol, arm: str, criterion: str | None = None,
                   target: int | None = None) -> list[RunSpec]:
    """The LR grid of `arm` at seed 0, ref E and the first target (of `control_targets` for
    the control arms), on the validation split."""
    if arm == "dense+ft":
        target = None
    elif target is None:
        target = p.control_targets[0] if arm in CONTROLS else p.targets[0]
    return [RunSpec(arm, 0, target, criterion, p.ref_epochs, lr) for lr in p.grid(arm)]


def best_lr(grid: list[tuple[float, float]]) -> float:
    """The LR of [(lr, validation top-1), ...] with the best top-1; ties: the smaller LR."""
    return max(grid, key=lambda g: (g[1], -g[0]))[0]


def chosen_lr(p: Protocol, rows: Rows, arm: str, criterion: str | None = None) -> float | None:
    """The grid LR with the best validation top-1 (ties: the smaller LR), once every grid
    run has finished; None before."""
    runs = selection_runs(p, arm, criterion)
    if not all(r.id in rows for r in runs):
        return None
    return best_lr([(r.lr, rows[r.id]["val_top1"]) for r in runs])


def ranked_criteria(p: Protocol, rows: Rows) -> list[str] | None:
    """Criteria by validation top-1 of pruned+ft at its chosen LR (seed 0, first target,
    ref E), best first; None until all are known."""
    vals = {}
    for c in p.criteria:
        lr = chosen_lr(p, rows, "pruned+ft", c)
        if lr is None:
            return None
        vals[c] = rows[RunSpec("pruned+ft", 0, p.targets[0], c, p.ref_epochs, lr).id]["val_top1"]
    return sorted(p.criteria, key=lambda c: (-vals[c], p.criteria.index(c)))


def scratch_b_epochs(p: Protocol, dense_macs: int, plan_macs: int) -> float:
    """Epochs of scratch-B: the pruned plan trained from scratch for the training FLOPs of
    pruned+ft at ref E (T epochs of the dense network, then ref E of the plan)."""
    return math.ceil(100 * (p.dense_epochs * dense_macs / plan_macs + p.ref_epochs)) / 100


def _tier0(p: Protocol, rows: Rows) -> list[RunSpec]:
    out = [RunSpec("dense", s) for s in p.seed_list]
    if "oneshot" in p.arms or "pruned+ft" in p.arms or any(
            a in p.arms for a in ("scratch-E", "scratch-B")):
        out += [RunSpec("oneshot", s, w, c) for s in p.seed_list for w in p.targets
                for c in p.criteria]
    out += selection_runs(p, "thin")
    if "pruned+ft" in p.arms:
        out += [r for c in p.criteria for r in selection_runs(p, "pruned+ft", c)]
    return out


def _tier1(p: Protocol, rows: Rows) -> list[RunSpec]:
    out, lr = [], chosen_lr(p, rows, "thin")
    for s in p.seed_list:
        for w in p.targets:
            if lr is not None:
                out.append(RunSpec("thin", s, w, None, p.ref_epochs, lr))
            for c in p.criteria if "pruned+ft" in p.arms else ():
                lc = chosen_lr(p, rows, "pruned+ft", c)
                if lc is not None:
                    out.append(RunSpec("pruned+ft", s, w, c, p.ref_epochs, lc))
    return out


def _tier2(p: Protocol, rows: Rows) -> list[RunSpec]:
    ranked, lr = ranked_criteria(p, rows), chosen_lr(p, rows, "thin")
    curve = (ranked or [])[:p.curve_criteria] if "pruned+ft" in p.arms else []
    out = []
    for s in p.seed_list:
        for w in p.curve_targets:
            for E in p.finetune_epochs:
                if E == p.ref_epochs:
                    continue
                if lr is not None:
                    out.append(RunSpec("thin", s, w, None, E, lr))
                out += [RunSpec("pruned+ft", s, w, c, E, chosen_lr(p, rows, "pruned+ft", c))
                        for c in curve]
    return out


def _tier3(p: Protocol, rows: Rows) -> list[RunSpec]:
    ranked = ranked_criteria(p, rows)
    best = ranked[0] if ranked else None
    arms = [a for a in ("dense+ft",) + CONTROLS if a in p.arms
            and (a == "dense+ft" or p.control_targets)]
    out = []
    for a in arms:
        crit = None if a == "dense+ft" else best
        if crit is None and a != "dense+ft":
            continue
        out += selection_runs(p, a, crit)
    for s in p.seed_list:
        for a in arms:
            crit = None if a == "dense+ft" else best
            if crit is None and a != "dense+ft":
                continue
            lr = chosen_lr(p, rows, a, crit)
            if lr is None:
                continue
            targets = [None] if a == "dense+ft" else p.control_targets
            out += [RunSpec(a, s, w, crit, p.ref_epochs, lr) for w in targets]
    return out


def all_runs(p: Protocol, rows: Rows) -> list[RunSpec]:
    """Every run decidable from `rows`, in tier order, each once."""
    seen, out = set(), []
    for tier in (_tier0, _tier1, _tier2, _tier3):
        for r in tier(p, rows):
            if r.id not in seen:
                seen.add(r.id)
                out.append(r)
    return out


def next_runs(p: Protocol, rows: Rows, failed: set = frozenset()) -> list[RunSpec]:
    """The decidable runs that have no row yet and did not fail in this invocation."""
    return [r for r in all_runs(p, rows) if r.id not in rows and r.id not in failed]


def is_selection(p: Protocol, spec: RunSpec) -> bool:
    """True for a grid run of the LR selection (seed 0, first target, ref E)."""
    crit = spec.criterion
    return spec.arm in p.lr_grid and any(
        r.id == spec.id for r in selection_runs(p, spec.arm, crit))
