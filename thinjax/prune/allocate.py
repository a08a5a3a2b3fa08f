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

A params/MACs target is searched by `thinjax.prune.search.search` (bisections on the
removal fraction, then round_to units one at a time). A target
still missed with ``round_to`` > 1 is refused (`TargetError` with the nearest costs and a
smaller ``round_to`` that meets it), unless the network is already masked (`allocate`).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
from collections.abc import Callable

import numpy as np

from thinjax.errors import TargetError  # also imported from here by callers and tests
from thinjax.plan import Plan
from thinjax.prune.criteria import normalize
from thinjax.prune.groups import Group
from thinjax.prune.search import (
    Around,
    CountsFn,
    Problem,
    Strategy,
    UnitRank,
    candidate,
    network_cost,
    network_groups,
    search,
)

KINDS = ("ratio", "params", "macs", "params_fraction", "macs_fraction")
METHODS = ("uniform", "global", "explicit")

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


def _check_options(method: str, round_to: int) -> None:
    """Refuses an unknown method or a round_to below 1."""
    if method not in METHODS:
        raise TargetError(f"unknown allocation method {method!r}; use one of "
                          f"{', '.join(METHODS)}")
    if round_to < 1:
        raise TargetError(f"round_to must be >= 1, got {round_to}")


def _problem(plan: Plan, scores: dict[str, np.ndarray], masks: dict | None, round_to: int,
             allow_block_removal: bool) -> Problem:
    """The `Problem` of pruning `plan` (already masked by `masks`, if any)."""
    groups = network_groups(plan)
    masks = ({n: np.ones((g.size,), np.float32) for n, g in groups.items()} if masks is None
             else {k: np.asarray(v) for k, v in masks.items()})
    alive = {n: np.asarray(masks[n]) > 0 for n in groups}
    minimum = {n: 0 if (g.removable and allow_block_removal) else min(round_to, g.size)
               for n, g in groups.items()}
    sc = {n: np.where(alive[n], np.asarray(scores[n], np.float64), -np.inf) for n in groups}
    return Problem(plan, groups, masks, {n: int(a.sum()) for n, a in alive.items()},
                    minimum, sc, round_to)


def _global_counts(pb: Problem, normalization: str) -> CountsFn:
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


def _uniform_counts(pb: Problem, ratio: dict[str, float]) -> CountsFn:
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


def _global_unit_rank(pb: Problem, normalization: str) -> UnitRank:
    """Global ranking of round_to units: the mean normalised score of the channels a unit
    removes (a group's lowest-scored kept channels)."""
    ns = normalize(pb.scores, pb.masks, normalization)
    order = {n: np.argsort(-pb.scores[n], kind="stable") for n in pb.groups}

    def rank(n: str, k: int, new: int, taken: int) -> tuple | None:
        return (float(np.mean(ns[n][order[n][new:k]])),)

    return rank


def _uniform_unit_rank(pb: Problem, ratio: dict[str, float]) -> UnitRank:
    """Uniform ranking of round_to units: round robin over the pruned groups (each gives
    one unit before any gives a second), least important (mean score) first."""
    mean = {n: float(np.mean(np.where(np.isfinite(s), s, 0))) for n, s in pb.scores.items()}

    def rank(n: str, k: int, new: int, taken: int) -> tuple | None:
        return (taken, mean[n]) if ratio[n] > 0 else None

    return rank


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


def _masks_from_counts(pb: Problem, counts: dict[str, int]) -> dict[str, np.ndarray]:
    """Float 0/1 masks keeping each group's `counts[group]` highest-scored live channels."""
    out = {}
    for n, g in pb.groups.items():
        m = np.zeros(g.size, np.float32)
        if counts[n]:
            m[np.argsort(-pb.scores[n], kind="stable")[:counts[n]]] = 1.0
        out[n] = m
    return out


def _strategy(pb: Problem, method: str, normalization: str,
              group_ratios: tuple) -> Strategy:
    """The counts and unit ranking of `method`."""
    if method == "global":
        return Strategy(_global_counts(pb, normalization),
                         _global_unit_rank(pb, normalization))
    ratio = _ratios(pb.groups, method, group_ratios)
    return Strategy(_uniform_counts(pb, ratio), _uniform_unit_rank(pb, ratio))


def _allocate(plan: Plan, scores: dict[str, np.ndarray], target: Target, *, method: str,
              masks: dict | None, round_to: int, allow_block_removal: bool, input_size: int,
              normalization: str, group_ratios: tuple,
              tolerance: float) -> tuple[Allocation, Around]:
    """`allocate` without its refusal of a missed target: the allocation, and the nearest
    candidates tried above and below the target (None where nothing was searched)."""
    _check_options(method, round_to)
    pb = _problem(plan, scores, masks, round_to, allow_block_removal)
    strategy = _strategy(pb, method, normalization, group_ratios)
    dense = network_cost(plan, input_size)
    kind, value = target.absolute(dense.params, dense.macs)
    if kind == "ratio":
        t = 1.0 if method == "explicit" else value
        best, around = candidate(pb, strategy.counts(t, 0.0), input_size), None
        err = 0.0
    else:
        best, around = search(pb, strategy, kind, float(value), method=method,
                               allow_block_removal=allow_block_removal,
                               input_size=input_size, tolerance=tolerance)
        err = (best.value(kind) - value) / value
    counts = _drop_whole_blocks(pb.groups, best.counts)
    return Allocation(_masks_from_counts(pb, counts), best.plan, best.cost.params,
                      best.cost.macs, (kind, float(value)), err), around


def _finer_round_to(run: Callable[..., tuple[Allocation, Around]], round_to: int,
                    tolerance: float) -> tuple[int, Allocation] | None:
    """The largest divisor of `round_to` below it whose allocation (`run(round_to=r)`) meets
    the target within the tolerance, with that allocation; None if none does."""
    for r in range(round_to - 1, 0, -1):
        if round_to % r:
            continue
        try:
            alloc, _ = run(round_to=r)
        except TargetError:
            continue
        if abs(alloc.rel_error) <= tolerance:
            return r, alloc
    return None


def _miss_message(alloc: Allocation, around: Around, method: str, round_to: int,
                  tolerance: float, finer: tuple[int, Allocation] | None) -> str:
    """Why a params/MACs target is refused, the nearest costs reached and how to reach it."""
    kind, want = alloc.target
    near = [f"{c.value(kind):,} {kind} ({(c.value(kind) - want) / want:+.2%})"
            for c in around if c is not None]
    msg = (f"target {kind}={want:,.0f} cannot be met within {tolerance:.0%} with method "
           f"{method!r} and round_to={round_to}: the nearest allocations have "
           f"{' and '.join(near)}; ")
    if finer is not None:
        r, a = finer
        got = a.params if kind == "params" else a.macs
        msg += f"round_to={r} reaches {got:,} {kind} ({a.rel_error:+.2%}); "
    return msg + "lower round_to, or set the target to one of those costs"


def allocate(plan: Plan, scores: dict[str, np.ndarray], target: Target, *,
             method: str = "global", masks: dict | None = None, round_to: int = 1,
             allow_block_removal: bool = False, input_size: int = 32,
             normalization: str = "mean", group_ratios: tuple = (),
             tolerance: float = 0.01, strict: bool | None = None) -> Allocation:
    """Keep-masks for `plan` that reach `target`, removing the lowest-scored channels.
    `plan` may also be a traced network (`thinjax.trace.TracedNet`: its groups and cost
    model stand in for the plan's, `input_size` aside).

    A params/MACs target is met within `tolerance` (relative) or, with round_to > 1 and
    `strict`, refused: TargetError names the nearest costs reached and the largest smaller
    round_to that meets it. `strict` defaults to "no channel is masked yet"; on an already
    masked network (a schedule's later event: masks only shrink, so fewer allocations
    exist) the nearest allocation is returned and `rel_error` says how near. A target at
    or above the network's current cost keeps every live channel."""
    run = functools.partial(_allocate, plan, scores, target, method=method, masks=masks,
                            allow_block_removal=allow_block_removal, input_size=input_size,
                            normalization=normalization, group_ratios=group_ratios,
                            tolerance=tolerance)
    alloc, around = run(round_to=round_to)
    if strict is None:
        strict = masks is None or all(np.all(np.asarray(m) > 0) for m in masks.values())
    if strict and around is not None and round_to > 1 and abs(alloc.rel_error) > tolerance:
        raise TargetError(_miss_message(alloc, around, method, round_to, tolerance,
                                        _finer_round_to(run, round_to, tolerance)))
    return alloc
