"""The search behind a params/MACs target (`search`), for `thinjax.prune.allocate`.

A bisection on the removal fraction ``t`` (every group, or all channels, at once), then a
bisection on ``fine``, a further share of the inner channels (global) or inner groups
(uniform, explicit) given up on top of the largest ``t`` still above the target: one
residual-stream channel costs many inner ones. If that still misses by more than the
tolerance (typically with ``round_to`` > 1, where a step of ``fine`` is rounded away),
groups give up units of ``round_to`` channels one at a time, in the method's order,
skipping units that would overshoot (`unit_fill`).
"""

from __future__ import annotations

import dataclasses
import heapq
from collections.abc import Callable
from typing import Any

import numpy as np

from thinjax.cost import Cost, count
from thinjax.errors import TargetError
from thinjax.plan import Plan
from thinjax.prune.groups import Group, channel_groups, plan_with_counts

# (t, fine) -> channels each group keeps; see `_global_counts` and `_uniform_counts`
CountsFn = Callable[[float, float], dict[str, int]]
# (group, channels it keeps, channels after one more unit, units it gave up so far)
# -> sort key of that unit (lowest first), or None where the group may not give it up
UnitRank = Callable[[str, int, int, int], tuple | None]



@dataclasses.dataclass(frozen=True)
class Problem:
    """What every step of one allocation reads: the plan's groups, the channels each group
    keeps now (`current`), the fewest it may keep (`minimum`) and the channel scores, with
    the channels already masked at -inf (they sort first and stay masked)."""
    plan: Plan | Any       # or a traced network (`network_groups`)
    groups: dict[str, Group]
    masks: dict[str, np.ndarray]
    current: dict[str, int]
    minimum: dict[str, int]
    scores: dict[str, np.ndarray]
    round_to: int

    def rounded(self, name: str, k: float) -> int:
        """`k` channels of group `name` rounded to `round_to`, within the group's bounds."""
        g = self.groups[name]
        return min(self.current[name], round_count(k, g.size, self.minimum[name], self.round_to))


@dataclasses.dataclass(frozen=True)
class Strategy:
    """An allocation method: its counts at (t, fine) and its ranking of round_to units."""
    counts: CountsFn
    rank: UnitRank


@dataclasses.dataclass(frozen=True)
class Candidate:
    """One allocation tried by the search: channel counts, the plan they make, its cost."""
    counts: dict[str, int]
    plan: Plan | Any
    cost: Cost

    def value(self, kind: str) -> int:
        """Its params or MACs (`kind`)."""
        return getattr(self.cost, kind)


# the nearest candidates tried above and below a target; None where nothing was searched
Around = tuple[Candidate | None, Candidate | None] | None


# A network to allocate on is a `Plan`, or an object with the same role that is not one
# (`thinjax.trace.TracedNet`): its ``groups``, ``with_counts(counts)`` (the network keeping
# `counts` channels per group), ``cost()`` and ``describe()``.

def network_groups(net: Plan | Any) -> dict[str, Group]:
    """The channel groups of `net` (a plan's, or a traced network's own)."""
    return channel_groups(net) if isinstance(net, Plan) else net.groups


def network_cost(net: Plan | Any, input_size: int) -> Cost:
    """Params and MACs of `net` (a plan at `input_size`; a traced network at its trace's)."""
    return count(net, input_size) if isinstance(net, Plan) else net.cost()


def round_count(k: float, size: int, minimum: int, round_to: int) -> int:
    """Nearest multiple of round_to (or the full size), at least `minimum`."""
    if round_to > 1 and k < size:
        k = round_to * round(k / round_to)
    return int(min(size, max(minimum, k)))


def candidate(pb: Problem, counts: dict[str, int], input_size: int) -> Candidate:
    """The plan and cost of keeping `counts` channels per group."""
    net = pb.plan
    p = plan_with_counts(net, counts) if isinstance(net, Plan) else net.with_counts(counts)
    return Candidate(counts, p, network_cost(p, input_size))


def bisect(f: Callable[[float], Candidate], want: float,
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


def check_reachable(smallest: Candidate, kind: str, want: float, method: str,
                     round_to: int, allow_block_removal: bool, tolerance: float) -> None:
    """Refuses a target below (beyond tolerance) what the smallest allowed network costs."""
    lowest = smallest.value(kind)
    if want < lowest * (1 - tolerance):
        raise TargetError(
            f"target {kind}={want:,.0f} is unreachable: with method {method!r}, "
            f"round_to={round_to} and allow_block_removal={allow_block_removal} the "
            f"smallest network has {lowest:,} {kind} ({smallest.plan.describe()}); raise the "
            "target, lower round_to or allow block removal")


def unit_fill(pb: Problem, start: dict[str, int], rank: UnitRank, kind: str, want: float,
               tolerance: float, at: Callable[[dict[str, int]], Candidate]) -> None:
    """From `start` (above the target), groups give up units of `round_to` channels in
    `rank` order (never below their minimum) until the cost falls to `want`; a group whose
    next unit would take the cost below the tolerance band gives up no more. Every
    candidate goes through `at`. This is the last step of a search that the bisections
    left outside the tolerance: with round_to > 1 a step of `fine` is rounded away, and one
    unit of a wide early layer can cost more than the whole band."""
    names = list(pb.groups)
    counts, taken, heap = dict(start), {n: 0 for n in names}, []

    def push(i: int) -> None:
        n, k = names[i], counts[names[i]]
        new = (k - 1) // pb.round_to * pb.round_to
        key = rank(n, k, new, taken[n]) if k > 0 and new >= pb.minimum[n] else None
        if key is not None:
            heapq.heappush(heap, (key, i, new))

    for i in range(len(names)):
        push(i)
    while heap:
        _, i, new = heapq.heappop(heap)
        got = at({**counts, names[i]: new}).value(kind)
        if got < want * (1 - tolerance):
            continue
        counts[names[i]], taken[names[i]] = new, taken[names[i]] + 1
        if got <= want:
            return
        push(i)


def nearest(tried: list[Candidate], kind: str,
             want: float) -> tuple[Candidate | None, Candidate | None]:
    """The tried candidates nearest to `want` from above and from below (or at it)."""
    above = [c for c in tried if c.value(kind) > want]
    below = [c for c in tried if c.value(kind) <= want]
    return (min(above, key=lambda c: c.value(kind)) if above else None,
            max(below, key=lambda c: c.value(kind)) if below else None)


def search(pb: Problem, strategy: Strategy, kind: str, want: float, *, method: str,
            allow_block_removal: bool, input_size: int,
            tolerance: float) -> tuple[Candidate, Around]:
    """The allocation closest to `want` params or MACs (`kind`), and the nearest ones tried
    above and below it (None where no search was needed): a bisection on t, then, if that
    misses by more than a quarter of the tolerance, one on `fine` at the largest t still
    above the target, then, if still outside the tolerance, `unit_fill`."""
    tried: list[Candidate] = []

    def at_counts(counts: dict[str, int]) -> Candidate:
        tried.append(candidate(pb, counts, input_size))
        return tried[-1]

    def at(t: float, fine: float = 0.0) -> Candidate:
        return at_counts(strategy.counts(t, fine))

    first = at(0.0)
    check_reachable(at(1.0), kind, want, method, pb.round_to, allow_block_removal,
                     tolerance)
    if want >= first.value(kind):
        return first, None
    t_best, best_err, t_above = bisect(at, want, kind)
    fine_best, f_above = 0.0, 0.0
    if best_err > tolerance / 4:
        f_best, f_err, f_above = bisect(lambda f: at(t_above, f), want, kind)
        if f_err < best_err:
            t_best, fine_best, best_err = t_above, f_best, f_err
    best = at(t_best, fine_best)
    if best_err > tolerance:
        unit_fill(pb, strategy.counts(t_above, f_above), strategy.rank, kind, want,
                   tolerance, at_counts)
        best = min(tried, key=lambda c: (abs(c.value(kind) - want), c.value(kind)))
    return best, nearest(tried, kind, want)
