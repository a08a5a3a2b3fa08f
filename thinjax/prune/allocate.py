"""Allocation: scores + a target -> keep-masks.

Methods:
  ``uniform``   every group loses the same fraction of its channels;
  ``global``    all channels of all groups ranked together (scores normalised per group),
                the lowest removed first;
  ``explicit``  per-group fractions from ``group_ratios``: ``((regex, fraction), ...)``
                matched against group names (first match wins, unmatched groups keep all).
Targets (`Target`):
  ``ratio``                 fraction of channels removed (uniform: of each group; global:
                            of all prunable channels; explicit: the ratios as given);
  ``params`` / ``macs``     the pruned network's parameter count / MACs, found by bisection
                            on the removal fraction (explicit: the ratios are scaled);
  ``params_fraction`` / ``macs_fraction``  the same as a fraction of the dense network's.
Every group keeps a multiple of ``round_to`` channels (or all of them); residual streams
keep at least one multiple, and an inner group only falls to zero (its block dropped) with
``allow_block_removal``. Masks only shrink: channels already masked stay masked.
"""

from __future__ import annotations

import dataclasses
import math
import re

import numpy as np

from thinjax.cost import count
from thinjax.plan import Plan
from thinjax.prune.criteria import normalize
from thinjax.prune.groups import channel_groups, init_masks, plan_with_counts

KINDS = ("ratio", "params", "macs", "params_fraction", "macs_fraction")
METHODS = ("uniform", "global", "explicit")


class TargetError(ValueError):
    """A pruning target that the plan, method and constraints cannot reach."""


@dataclasses.dataclass(frozen=True)
class Target:
    kind: str
    value: float

    def __post_init__(self):
        if self.kind not in KINDS:
            raise TargetError(f"unknown pruning target kind {self.kind!r}; use one of "
                              f"{', '.join(KINDS)}")
        if self.kind in ("ratio", "params_fraction", "macs_fraction") and \
                not 0.0 <= self.value <= 1.0:
            raise TargetError(f"target {self.kind}={self.value}: must be in [0, 1]")
        if self.kind in ("params", "macs") and self.value <= 0:
            raise TargetError(f"target {self.kind}={self.value}: must be > 0")

    def absolute(self, dense_params: int, dense_macs: int) -> tuple[str, float]:
        """('params'|'macs'|'ratio', value) with fractions resolved against the dense net."""
        if self.kind == "params_fraction":
            return "params", self.value * dense_params
        if self.kind == "macs_fraction":
            return "macs", self.value * dense_macs
        return self.kind, self.value


@dataclasses.dataclass
class Allocation:
    masks: dict[str, np.ndarray]
    plan: Plan            # the materialised plan
    params: int
    macs: int
    target: tuple[str, float]
    rel_error: float      # (achieved - target) / target, for params/MACs targets


def _round(k: float, size: int, minimum: int, round_to: int) -> int:
    """Nearest multiple of round_to (or the full size), at least `minimum`."""
    if round_to > 1 and k < size:
        k = round_to * round(k / round_to)
    return int(min(size, max(minimum, k)))


def allocate(plan: Plan, scores: dict[str, np.ndarray], target: Target, *,
             method: str = "global", masks: dict | None = None, round_to: int = 1,
             allow_block_removal: bool = False, input_size: int = 32,
             normalization: str = "mean", group_ratios: tuple = (),
             tolerance: float = 0.01) -> Allocation:
    """Keep-masks for `plan` that reach `target`, removing the lowest-scored channels."""
    if method not in METHODS:
        raise TargetError(f"unknown allocation method {method!r}; use one of "
                          f"{', '.join(METHODS)}")
    if round_to < 1:
        raise TargetError(f"round_to must be >= 1, got {round_to}")
    groups = channel_groups(plan)
    masks = init_masks(plan) if masks is None else {k: np.asarray(v) for k, v in masks.items()}
    alive = {n: np.asarray(masks[n]) > 0 for n in groups}
    current = {n: int(a.sum()) for n, a in alive.items()}
    minimum = {n: 0 if (g.removable and allow_block_removal) else min(round_to, g.size)
               for n, g in groups.items()}
    # channels already masked sort first (and stay masked)
    sc = {n: np.where(alive[n], np.asarray(scores[n], np.float64), -np.inf) for n in groups}

    if method == "global":
        ns = normalize(sc, masks, normalization)
        flat = [(s, n, i) for n in groups for i, s in enumerate(ns[n])]
        order = sorted(flat, key=lambda t: t[0])
        total = sum(g.size for g in groups.values())
        total_inner = sum(g.size for g in groups.values() if g.kind == "inner")

        def counts_at(t: float, fine: float = 0.0) -> dict[str, int]:
            """Remove the lowest t x all channels; then (`fine`) continue down the ranking
            through inner channels only: a stream channel costs many times an inner one,
            so this is how a params/MACs target is met within 1%."""
            n_remove, n_fine = int(round(t * total)), int(round(fine * total_inner))
            keep = {n: g.size for n, g in groups.items()}
            for s, n, _ in order:
                if n_remove <= 0 and (n_fine <= 0 or groups[n].kind != "inner"):
                    if n_fine <= 0:
                        break
                    continue
                if keep[n] > minimum[n]:
                    keep[n] -= 1
                    if n_remove > 0:
                        n_remove -= 1
                    else:
                        n_fine -= 1
            return {n: min(current[n], _round(k, groups[n].size, minimum[n], round_to))
                    for n, k in keep.items()}
    else:
        if method == "explicit":
            pats = [(re.compile(p), float(r)) for p, r in group_ratios]
            if not pats:
                raise TargetError("allocation 'explicit' needs prune.group_ratios, e.g. "
                                  "(('stage3', 0.5), ('stage1/.*', 0.25))")
            for p, r in pats:
                if not 0.0 <= r <= 1.0:
                    raise TargetError(f"group ratio {p.pattern!r}: {r} is not in [0, 1]")
            ratio = {n: next((r for p, r in pats if p.search(n)), 0.0) for n in groups}
        else:
            ratio = {n: 1.0 for n in groups}

        # `fine`: this fraction of the (pruned) inner groups, least important first, gives
        # up one channel more than the ratio says (one channel of every group at once is too
        # coarse a step to meet a params/MACs target within 1%)
        inner = sorted((n for n, g in groups.items() if g.kind == "inner" and ratio[n] > 0),
                       key=lambda n: float(np.mean(np.where(np.isfinite(sc[n]), sc[n], 0))))

        def counts_at(t: float, fine: float = 0.0) -> dict[str, int]:
            out = {}
            extra = set(inner[:int(round(fine * len(inner)))])
            for n, g in groups.items():
                k = g.size - math.floor(g.size * t * ratio[n] + 1e-9) - (n in extra)
                if k == 0 and minimum[n] > 0:
                    k = minimum[n]
                out[n] = min(current[n], _round(k, g.size, minimum[n], round_to))
            return out

    def cost_at(t: float, fine: float = 0.0):
        c = counts_at(t, fine)
        p = plan_with_counts(plan, c)
        return c, p, count(p, input_size)

    def bisect(f, want: float, attr: str):
        """(best x in [0, 1], its relative error, the largest x whose cost exceeds want)."""
        lo, hi, best, best_err = 0.0, 1.0, 1.0, float("inf")
        for _ in range(40):
            mid = (lo + hi) / 2
            got = getattr(f(mid)[2], attr)
            err = abs(got - want) / want
            if err < best_err or (err == best_err and got <= want):
                best, best_err = mid, err
            if got > want:
                lo = mid
            else:
                hi = mid
            if hi - lo < 1e-7:
                break
        return best, best_err, lo

    dense = count(plan, input_size)
    kind, value = target.absolute(dense.params, dense.macs)
    fine_best = 0.0
    if kind == "ratio":
        t_best = 1.0 if method == "explicit" else value
    else:
        attr = kind
        want = float(value)
        _, p0, c0 = cost_at(0.0)
        _, p1, c1 = cost_at(1.0)
        have, lowest = getattr(c0, attr), getattr(c1, attr)
        if want < lowest * (1 - tolerance):
            raise TargetError(
                f"target {kind}={want:,.0f} is unreachable: with method {method!r}, "
                f"round_to={round_to} and allow_block_removal={allow_block_removal} the "
                f"smallest network has {lowest:,} {kind} ({p1.describe()}); raise the target, "
                "lower round_to or allow block removal")
        if want >= have:
            t_best = 0.0
        else:
            t_best, best_err, t_above = bisect(cost_at, want, attr)
            if best_err > tolerance / 4:
                f_best, f_err, _ = bisect(lambda f: cost_at(t_above, f), want, attr)
                if f_err < best_err:
                    t_best, fine_best = t_above, f_best
    counts, new_plan, c = cost_at(t_best, fine_best)
    for n, g in groups.items():  # a block that loses one inner group loses the others too
        if g.kind == "inner" and counts[n] == 0:
            for m in groups:
                if groups[m].block == g.block:
                    counts[m] = 0
    new_masks = {}
    for n, g in groups.items():
        m = np.zeros(g.size, np.float32)
        if counts[n]:
            m[np.argsort(-sc[n], kind="stable")[:counts[n]]] = 1.0
        new_masks[n] = m
    if kind == "ratio":
        err = 0.0
    else:
        err = (getattr(c, kind) - value) / value
    return Allocation(new_masks, new_plan, c.params, c.macs, (kind, float(value)), err)
