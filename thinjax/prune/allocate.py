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

How a params/MACs target is searched (`_search`): a bisection on the removal fraction ``t``
(every group, or all channels, at once), then a bisection on ``fine``, a further share of
the inner channels (global) or inner groups (uniform, explicit) given up on top of the
largest ``t`` still above the target: one residual-stream channel costs many inner ones.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Callable

import numpy as np

from thinjax.cost import Cost, count
from thinjax.plan import Plan
from thinjax.prune.criteria import normalize
from thinjax.prune.groups import Group, channel_groups, init_masks, plan_with_counts

KINDS = ("ratio", "params", "macs", "params_fraction", "macs_fraction")
METHODS = ("uniform", "global", "explicit")

# (t, fine) -> channels each group keeps; see `_global_counts` and `_uniform_counts`
CountsFn = Callable[[float, float], dict[str, int]]


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


@dataclasses.dataclass(frozen=True)
class _Problem:
    """What every step of one allocation reads: the plan's groups, the channels each group
    keeps now (`current`), the fewest it may keep (`minimum`) and the channel scores, with
    the channels already masked at -inf (they sort first and stay masked)."""
    plan: Plan
    groups: dict[str, Group]
    masks: dict[str, np.ndarray]
    current: dict[str, int]
    minimum: dict[str, int]
    scores: dict[str, np.ndarray]
    round_to: int

    def rounded(self, name: str, k: float) -> int:
        """`k` channels of group `name` rounded to `round_to`, within the group's bounds."""
        g = self.groups[name]
        return min(self.current[name], _round(k, g.size, self.minimum[name], self.round_to))


@dataclasses.dataclass(frozen=True)
class _Candidate:
    """One allocation tried by the search: channel counts, the plan they make, its cost."""
    counts: dict[str, int]
    plan: Plan
    cost: Cost

    def value(self, kind: str) -> int:
        """Its params or MACs (`kind`)."""
        return getattr(self.cost, kind)


def _round(k: float, size: int, minimum: int, round_to: int) -> int:
    """Nearest multiple of round_to (or the full size), at least `minimum`."""
    if round_to > 1 and k < size:
        k = round_to * round(k / round_to)
    return int(min(size, max(minimum, k)))


def _check_options(method: str, round_to: int) -> None:
    """Refuses an unknown method or a round_to below 1."""
    if method not in METHODS:
        raise TargetError(f"unknown allocation method {method!r}; use one of "
                          f"{', '.join(METHODS)}")
    if round_to < 1:
        raise TargetError(f"round_to must be >= 1, got {round_to}")


def _problem(plan: Plan, scores: dict[str, np.ndarray], masks: dict | None, round_to: int,
             allow_block_removal: bool) -> _Problem:
    """The `_Problem` of pruning `plan` (already masked by `masks`, if any)."""
    groups = channel_groups(plan)
    masks = init_masks(plan) if masks is None else {k: np.asarray(v) for k, v in masks.items()}
    alive = {n: np.asarray(masks[n]) > 0 for n in groups}
    minimum = {n: 0 if (g.removable and allow_block_removal) else min(round_to, g.size)
               for n, g in groups.items()}
    sc = {n: np.where(alive[n], np.asarray(scores[n], np.float64), -np.inf) for n in groups}
    return _Problem(plan, groups, masks, {n: int(a.sum()) for n, a in alive.items()},
                    minimum, sc, round_to)


def _global_counts(pb: _Problem, normalization: str) -> CountsFn:
    """Counts for the global ranking: `counts(t, fine)` removes the lowest t x all channels
    (scores normalised per group), then continues down the ranking through `fine` x all
    inner channels, inner channels only: a stream channel costs many times an inner one,
    so this is how a params/MACs target is met within 1%."""
    groups, minimum = pb.groups, pb.minimum
    ns = normalize(pb.scores, pb.masks, normalization)
    order = sorted(((s, n, i) for n in groups for i, s in enumerate(ns[n])),
                   key=lambda t: t[0])
    total = sum(g.size for g in groups.values())
    total_inner = sum(g.size for g in groups.values() if g.kind == "inner")

    def counts(t: float, fine: float = 0.0) -> dict[str, int]:
        n_remove, n_fine = int(round(t * total)), int(round(fine * total_inner))
        keep = {n: g.size for n, g in groups.items()}
        for _, n, _ in order:
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
        return {n: pb.rounded(n, k) for n, k in keep.items()}

    return counts


def _ratios(groups: dict[str, Group], method: str, group_ratios: tuple) -> dict[str, float]:
    """The fraction of its channels each group loses at t=1: 1 everywhere (uniform) or the
    first `group_ratios` regex matching the group's name (explicit; unmatched groups 0)."""
    if method != "explicit":
        return {n: 1.0 for n in groups}
    pats = [(re.compile(p), float(r)) for p, r in group_ratios]
    if not pats:
        raise TargetError("allocation 'explicit' needs prune.group_ratios, e.g. "
                          "(('stage3', 0.5), ('stage1/.*', 0.25))")
    for p, r in pats:
        if not 0.0 <= r <= 1.0:
            raise TargetError(f"group ratio {p.pattern!r}: {r} is not in [0, 1]")
    return {n: next((r for p, r in pats if p.search(n)), 0.0) for n in groups}


def _uniform_counts(pb: _Problem, ratio: dict[str, float]) -> CountsFn:
    """Counts for uniform (and explicit) allocation: `counts(t, fine)` removes t x ratio of
    every group; then `fine` x the pruned inner groups, least important (lowest mean score)
    first, give up one channel more (one channel of every group at once is too coarse a
    step to meet a params/MACs target within 1%)."""
    inner = sorted((n for n, g in pb.groups.items() if g.kind == "inner" and ratio[n] > 0),
                   key=lambda n: float(np.mean(np.where(np.isfinite(pb.scores[n]),
                                                        pb.scores[n], 0))))

    def counts(t: float, fine: float = 0.0) -> dict[str, int]:
        out = {}
        extra = set(inner[:int(round(fine * len(inner)))])
        for n, g in pb.groups.items():
            k = g.size - math.floor(g.size * t * ratio[n] + 1e-9) - (n in extra)
            if k == 0 and pb.minimum[n] > 0:
                k = pb.minimum[n]
            out[n] = pb.rounded(n, k)
        return out

    return counts


def _candidate(pb: _Problem, counts: dict[str, int], input_size: int) -> _Candidate:
    """The plan and cost of keeping `counts` channels per group."""
    p = plan_with_counts(pb.plan, counts)
    return _Candidate(counts, p, count(p, input_size))


def _bisect(f: Callable[[float], _Candidate], want: float,
            kind: str) -> tuple[float, float, float]:
    """(best x in [0, 1], its relative error, the largest x whose cost exceeds want), for a
    cost `f(x).value(kind)` that falls as x grows."""
    lo, hi, best, best_err = 0.0, 1.0, 1.0, float("inf")
    for _ in range(40):
        mid = (lo + hi) / 2
        got = f(mid).value(kind)
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


def _check_reachable(smallest: _Candidate, kind: str, want: float, method: str,
                     round_to: int, allow_block_removal: bool, tolerance: float) -> None:
    """Refuses a target below (beyond tolerance) what the smallest allowed network costs."""
    lowest = smallest.value(kind)
    if want < lowest * (1 - tolerance):
        raise TargetError(
            f"target {kind}={want:,.0f} is unreachable: with method {method!r}, "
            f"round_to={round_to} and allow_block_removal={allow_block_removal} the "
            f"smallest network has {lowest:,} {kind} ({smallest.plan.describe()}); raise the "
            "target, lower round_to or allow block removal")


def _search(pb: _Problem, counts_at: CountsFn, kind: str, want: float, *, method: str,
            allow_block_removal: bool, input_size: int, tolerance: float) -> _Candidate:
    """The allocation closest to `want` params or MACs (`kind`): a bisection on t, then, if
    that misses by more than a quarter of the tolerance, one on `fine` at the largest t
    still above the target (see the module docstring)."""
    def at(t: float, fine: float = 0.0) -> _Candidate:
        return _candidate(pb, counts_at(t, fine), input_size)

    first = at(0.0)
    _check_reachable(at(1.0), kind, want, method, pb.round_to, allow_block_removal,
                     tolerance)
    if want >= first.value(kind):
        return first
    t_best, best_err, t_above = _bisect(at, want, kind)
    fine_best = 0.0
    if best_err > tolerance / 4:
        f_best, f_err, _ = _bisect(lambda f: at(t_above, f), want, kind)
        if f_err < best_err:
            t_best, fine_best = t_above, f_best
    return at(t_best, fine_best)


def _drop_whole_blocks(groups: dict[str, Group], counts: dict[str, int]) -> dict[str, int]:
    """`counts` with every inner group of a block zeroed where one of them is zero (a block
    that loses one inner group loses the others too: bottlenecks)."""
    counts = dict(counts)
    for n, g in groups.items():
        if g.kind == "inner" and counts[n] == 0:
            for m in groups:
                if groups[m].block == g.block:
                    counts[m] = 0
    return counts


def _masks_from_counts(pb: _Problem, counts: dict[str, int]) -> dict[str, np.ndarray]:
    """Float 0/1 masks keeping each group's `counts[group]` highest-scored live channels."""
    out = {}
    for n, g in pb.groups.items():
        m = np.zeros(g.size, np.float32)
        if counts[n]:
            m[np.argsort(-pb.scores[n], kind="stable")[:counts[n]]] = 1.0
        out[n] = m
    return out


def allocate(plan: Plan, scores: dict[str, np.ndarray], target: Target, *,
             method: str = "global", masks: dict | None = None, round_to: int = 1,
             allow_block_removal: bool = False, input_size: int = 32,
             normalization: str = "mean", group_ratios: tuple = (),
             tolerance: float = 0.01) -> Allocation:
    """Keep-masks for `plan` that reach `target`, removing the lowest-scored channels."""
    _check_options(method, round_to)
    pb = _problem(plan, scores, masks, round_to, allow_block_removal)
    if method == "global":
        counts_at = _global_counts(pb, normalization)
    else:
        counts_at = _uniform_counts(pb, _ratios(pb.groups, method, group_ratios))
    dense = count(plan, input_size)
    kind, value = target.absolute(dense.params, dense.macs)
    if kind == "ratio":
        best = _candidate(pb, counts_at(1.0 if method == "explicit" else value, 0.0),
                          input_size)
        err = 0.0
    else:
        best = _search(pb, counts_at, kind, float(value), method=method,
                       allow_block_removal=allow_block_removal, input_size=input_size,
                       tolerance=tolerance)
        err = (best.value(kind) - value) / value
    counts = _drop_whole_blocks(pb.groups, best.counts)
    return Allocation(_masks_from_counts(pb, counts), best.plan, best.cost.params,
                      best.cost.macs, (kind, float(value)), err)
