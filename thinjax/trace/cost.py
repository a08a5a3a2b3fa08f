"""Params and MACs of a traced network as a function of the channels each group keeps.

Every axis that matters to the cost (each dimension of a parameter leaf; each output and
contracted dimension of a convolution or dot product) has a size that is linear in the
groups' channel counts: ``const + sum(multiplicity[g] * kept[g])`` (a flatten before a
classifier holds each channel ``H*W`` times; a concatenation holds two groups). Params are
the ``params`` collection (not BatchNorm's running statistics), MACs those of every
convolution and dot product (one per weight use, for the whole example input), as
`thinjax.cost` counts a plan's.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

import numpy as np

from thinjax.trace.channels import Axis, Channels
from thinjax.trace.graph import Leaf, TracedGroup


@dataclasses.dataclass(frozen=True)
class Linear:
    """An axis size: ``const`` indices that no group holds, ``m`` per kept channel of g."""
    const: int
    per: tuple[tuple[str, int], ...] = ()

    def at(self, kept: Mapping[str, int]) -> int:
        return self.const + sum(m * kept[g] for g, m in self.per)


@dataclasses.dataclass(frozen=True)
class CostModel:
    params: tuple[tuple[Linear, ...], ...]            # the axes of each params leaf
    macs: tuple[tuple[int, tuple[Linear, ...]], ...]  # (multiplier, factors) per layer
    sizes: Mapping[str, int]                          # every group's full size

    def at(self, counts: Mapping[str, int] | None = None) -> tuple[int, int]:
        """(params, MACs) keeping `counts[g]` channels of each group (default: all)."""
        kept = {n: int((counts or {}).get(n, s)) for n, s in self.sizes.items()}
        params = sum(math.prod(a.at(kept) for a in axes) for axes in self.params)
        macs = sum(k * math.prod(a.at(kept) for a in f) for k, f in self.macs)
        return int(params), int(macs)


def _linear(ch: Channels, ids: Axis, n: int, lookup: dict[int, tuple[str, int]],
            sizes: Mapping[str, int], bad: dict[str, str]) -> Linear:
    """The size of an axis as a `Linear`; a group holding unequal shares of its channels
    on it goes to `bad`."""
    if ids is None:
        return Linear(n)
    hits: dict[str, list[int]] = {}
    const = 0
    for r in ch.roots(ids).tolist():
        g = lookup.get(r)
        if g is None:
            const += 1
        else:
            hits.setdefault(g[0], []).append(g[1])
    per = []
    for name, chans in hits.items():
        counts = np.bincount(chans, minlength=sizes[name])
        if counts.min() != counts.max():
            bad[name] = "an activation holds only some of its channels"
            continue
        per.append((name, int(counts[0])))
    return Linear(const, tuple(per))


def model(ch: Channels, leaves: list[Leaf], ids: list[list[np.ndarray]],
          terms: list[tuple[int, list[tuple[Axis, int]]]], groups: list[TracedGroup]
          ) -> tuple[CostModel, dict[str, str]]:
    """The cost model of `groups`, and the groups it cannot express (name -> why)."""
    sizes = {g.name: g.size for g in groups}
    lookup: dict[int, tuple[str, int]] = {}
    for g in groups:
        first = next(s for s in g.slices if (s.path, s.axis) == g.kernel_axes[0])
        roots = ch.roots(ids[first.leaf][first.axis])
        lookup.update({int(roots[i]): (g.name, j) for j, i in enumerate(first.rows[:, 0])})
    bad: dict[str, str] = {}
    params = tuple(tuple(_linear(ch, a, n, lookup, sizes, bad)
                         for a, n in zip(ids[k], leaf.shape))
                   for k, leaf in enumerate(leaves) if leaf.col == "params")
    macs = tuple((scale, tuple(_linear(ch, a, n, lookup, sizes, bad) for a, n in f))
                 for scale, f in terms)
    return CostModel(params, macs, sizes), bad
