"""Paired comparisons of two training arms over seeds: t-intervals, Holm, verdicts.

Two arms run with the same seeds see the same batches, so their difference per seed removes
the seed's share of the noise. For arm X against a reference arm (the ThinResNet),

    d_s = top1_X(s) - top1_ref(s),  s = 0..n-1
    mean +- t_{0.975, n-1} * sd / sqrt(n)        (the 95% t-interval of the mean difference)
    p = two-sided paired t-test of mean = 0

and the verdict, with a margin ``delta`` declared before anything ran:

* ``equivalent``: the interval lies inside [-delta, delta];
* ``X better`` / ``ref better``: otherwise, when the Holm-adjusted p of the comparison is
  below ``alpha`` (Holm's step-down correction over the comparisons of one family: the
  criteria compared at one target and budget);
* ``inconclusive``: neither.

A pure module (numpy and scipy), so a report's verdicts can be recomputed from its CSV.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np
from scipy import stats as _st

LEVEL = 0.95
ALPHA = 0.05


@dataclasses.dataclass(frozen=True)
class Interval:
    """The mean paired difference over `n` seeds, its `level` t-interval and the p-value
    of a two-sided paired t-test (nan when n < 2 or the differences do not vary)."""
    n: int
    mean: float
    sd: float
    lo: float
    hi: float
    p: float


def paired_interval(x: Sequence[float], ref: Sequence[float], level: float = LEVEL) -> Interval:
    """The interval of mean(x - ref) over paired seeds (x[i] and ref[i]: one seed)."""
    x, ref = np.asarray(x, np.float64), np.asarray(ref, np.float64)
    if x.shape != ref.shape or x.ndim != 1:
        raise ValueError(f"paired samples need one value per seed on both sides; got shapes "
                         f"{x.shape} and {ref.shape}")
    d = x - ref
    n = len(d)
    mean = float(d.mean()) if n else math.nan
    if n < 2:
        return Interval(n, mean, math.nan, math.nan, math.nan, math.nan)
    sd = float(d.std(ddof=1))
    half = float(_st.t.ppf(0.5 + level / 2, n - 1)) * sd / math.sqrt(n)
    if sd == 0.0:
        p = 1.0 if mean == 0.0 else 0.0
    else:
        p = float(2 * _st.t.sf(abs(mean) / (sd / math.sqrt(n)), n - 1))
    return Interval(n, mean, sd, mean - half, mean + half, p)


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-adjusted p-values (step-down, monotone, capped at 1), in the input order; a
    nan p stays nan and does not count towards the family size."""
    p = np.asarray(pvalues, np.float64)
    idx = [i for i in np.argsort(p, kind="stable") if not math.isnan(p[i])]
    m, out, running = len(idx), [math.nan] * len(p), 0.0
    for rank, i in enumerate(idx):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out


def verdict(iv: Interval, p_adj: float, delta: float, x: str = "X", ref: str = "thin",
            alpha: float = ALPHA) -> str:
    """'equivalent', '<x> better', '<ref> better' or 'inconclusive' (module docstring)."""
    if iv.n < 2 or math.isnan(iv.lo):
        return "inconclusive"
    if -delta <= iv.lo and iv.hi <= delta:
        return "equivalent"
    if not math.isnan(p_adj) and p_adj < alpha:
        return f"{x} better" if iv.mean > 0 else f"{ref} better"
    return "inconclusive"


@dataclasses.dataclass(frozen=True)
class Comparison:
    """Arm `x` against the reference arm at one target and budget, over paired seeds."""
    family: str
    x: str
    ref: str
    interval: Interval
    p_holm: float
    verdict: str


def compare_family(family: str, pairs: dict[str, tuple[Sequence[float], Sequence[float]]],
                   delta: float, ref: str = "thin", alpha: float = ALPHA,
                   level: float = LEVEL) -> list[Comparison]:
    """One family of comparisons (Holm over its members): {x name: (x values, ref values)},
    both in seed order."""
    names = list(pairs)
    ivs = [paired_interval(*pairs[k], level=level) for k in names]
    adj = holm([iv.p for iv in ivs])
    return [Comparison(family, k, ref, iv, pa, verdict(iv, pa, delta, k, ref, alpha))
            for k, iv, pa in zip(names, ivs, adj)]
