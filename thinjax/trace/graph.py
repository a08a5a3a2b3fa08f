"""From a walked trace to channel groups: the channels that must go together.

Channels are grouped by the layers that produce them: a group is every class of coupled
channels that one producer's output axis (a conv or dense kernel's) creates, joined with
every other producer coupled to it (the convolutions writing into one residual stream).
Each member of a group is a ``(leaf, axis)`` slice with an index map: channel ``j`` of the
group sits at ``rows[j]`` of that axis (one index, or several after a flatten before a
classifier; a concatenation's consumer holds each input's channels at an offset).
A group is refused, never guessed, when any of its channels is fixed, when its producers
do not map one to one, or when an axis holds only some of its channels.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from thinjax.prune.groups import Group, Member
from thinjax.trace.walk import Context


@dataclasses.dataclass(frozen=True)
class Leaf:
    """A variable leaf: its collection, its '/'-joined path in it, its shape."""
    col: str
    path: str
    shape: tuple[int, ...]

    @property
    def module(self) -> str:
        return self.path.rsplit("/", 1)[0] if "/" in self.path else ""


@dataclasses.dataclass(frozen=True, eq=False)
class Slice:
    """Channel j of a group is at indices ``rows[j]`` of axis `axis` of leaf number `leaf`
    (``col``/``path``)."""
    leaf: int
    col: str
    path: str
    axis: int
    rows: np.ndarray          # [group size, multiplicity]


@dataclasses.dataclass(frozen=True, eq=False)
class TracedGroup(Group):
    """A `Group` found by the trace (the criteria and the allocator read it as a plan's)."""
    slices: tuple[Slice, ...] = ()
    kernel_axes: tuple[Member, ...] = ()    # producer kernels (path, output axis)
    exact: bool = True                       # pruned == masked (no statistic over channels)
    notes: tuple[str, ...] = ()              # why not exact

    @property
    def kernels(self) -> tuple[str, ...]:
        return tuple(p for p, _ in self.kernel_axes)

    @property
    def kernel_members(self) -> tuple[Member, ...]:
        return self.kernel_axes

    def rows(self, path: str, axis: int) -> np.ndarray | None:
        for s in self.slices:
            if (s.path, s.axis) == (path, axis):
                return None if s.rows.shape[1] == 1 and np.array_equal(
                    s.rows[:, 0], np.arange(self.size)) else s.rows
        raise KeyError(f"{path} (axis {axis}) is no member of group {self.name}")


@dataclasses.dataclass(frozen=True)
class Refusal:
    """A would-be group that stays whole, and why."""
    name: str
    size: int
    reasons: tuple[str, ...]


def _key_components(keys: list[tuple[int, int]], roots: dict) -> list[list[int]]:
    """Producer keys joined when they produce a common class, in order of appearance."""
    parent = list(range(len(keys)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first: dict[int, int] = {}
    for i, k in enumerate(keys):
        for r in roots[k]:
            j = first.setdefault(int(r), i)
            a, b = find(i), find(j)
            parent[max(a, b)] = min(a, b)
    comps: dict[int, list[int]] = {}
    for i in range(len(keys)):
        comps.setdefault(find(i), []).append(i)
    return [comps[r] for r in sorted(comps)]


def _name(leaves: list[Leaf], keys: list[tuple[int, int]], key: tuple[int, int]) -> str:
    leaf = leaves[key[0]]
    shared = sum(1 for k in keys if k[0] == key[0]) > 1
    base = leaf.module or leaf.path
    return f"{base}:{key[1]}" if shared else base


def _check(cx: Context, leaves: list[Leaf], comp: list[tuple[int, int]], roots: dict,
           primary: tuple[int, int]) -> list[str]:
    """Why the producers `comp` cannot form a group (empty: they can)."""
    classes = roots[primary]
    why = []
    if len(set(classes.tolist())) != len(classes):
        why.append(f"{leaves[primary[0]].path}: its output channels are coupled with each "
                   "other")
    for k in comp:
        if len(roots[k]) != len(classes) or set(roots[k].tolist()) != set(classes.tolist()):
            why.append(f"{leaves[k[0]].path} (axis {k[1]}) and {leaves[primary[0]].path} "
                       "produce channels that do not match one to one")
    for r in set(classes.tolist()):
        why += [w for w in cx.ch.fixed.get(r, ()) if w not in why]
    return why


def _slices(leaves: list[Leaf], roots: dict, lookup: dict[int, tuple[int, int]],
            sizes: list[int]) -> tuple[dict[int, list[Slice]], dict[int, str]]:
    """Every leaf axis's share of each group (group index -> slices), and the groups with
    an axis holding only some of their channels (group index -> reason)."""
    out: dict[int, list[Slice]] = {}
    bad: dict[int, str] = {}
    for (li, axis), rts in roots.items():
        hits: dict[int, tuple[list[int], list[int]]] = {}
        for pos, r in enumerate(rts.tolist()):
            g = lookup.get(r)
            if g is not None:
                pos_list, ch_list = hits.setdefault(g[0], ([], []))
                pos_list.append(pos)
                ch_list.append(g[1])
        for g, (pos, chan) in hits.items():
            counts = np.bincount(chan, minlength=sizes[g])
            if counts.min() != counts.max():
                bad[g] = (f"{leaves[li].col}/{leaves[li].path} (axis {axis}) holds only some "
                          "of its channels")
                continue
            order = np.argsort(np.asarray(chan), kind="stable")
            rows = np.asarray(pos)[order].reshape(sizes[g], -1)
            leaf = leaves[li]
            out.setdefault(g, []).append(Slice(li, leaf.col, leaf.path, axis, rows))
    return out, bad


def _group(cx: Context, leaves: list[Leaf], name: str, comp: list[tuple[int, int]],
           slices: list[Slice], size: int, classes: np.ndarray) -> TracedGroup:
    consumers = set(cx.consumers)
    prod, cons = [], []
    for s in slices:
        m = (leaves[s.leaf].path, s.axis)
        (cons if (s.leaf, s.axis) in consumers else prod).append(m)
    notes = []
    for r in set(classes.tolist()):
        notes += [w for w in cx.ch.inexact.get(r, ()) if w not in notes]
    kernels = tuple((leaves[k[0]].path, k[1]) for k in comp)
    # a residual stream or a fork: more than one layer writes or reads these channels
    fan = max(sum(k not in cx.tied for k in comp), len(cons))
    kind = "stream" if fan > 1 else "inner"
    return TracedGroup(name=name, kind=kind, size=size, producers=tuple(prod),
                       consumers=tuple(cons), widths=(), slices=tuple(slices),
                       kernel_axes=kernels, exact=not notes, notes=tuple(notes))


def build(cx: Context, leaves: list[Leaf], ids: list[list[np.ndarray]]
          ) -> tuple[list[TracedGroup], list[Refusal]]:
    """The groups of a walked trace (streams first, then the others, each in the order
    their first producer ran) and the refused ones."""
    roots = {(li, a): cx.ch.roots(x) for li, axes in enumerate(ids) for a, x in enumerate(axes)}
    keys = list(cx.producers)
    cands, refused = [], []
    for comp_i in _key_components(keys, roots):
        comp = [keys[i] for i in comp_i]
        primary = next((k for k in comp if k not in cx.tied), comp[0])
        name = _name(leaves, keys, primary)
        why = _check(cx, leaves, comp, roots, primary)
        if why:
            refused.append(Refusal(name, len(roots[primary]), tuple(why)))
        else:
            cands.append((name, comp, roots[primary]))
    lookup = {int(r): (g, j) for g, (_, _, cl) in enumerate(cands)
              for j, r in enumerate(cl.tolist())}
    slices, bad = _slices(leaves, roots, lookup, [len(c[2]) for c in cands])
    groups = []
    for g, (name, comp, classes) in enumerate(cands):
        if g in bad:
            refused.append(Refusal(name, len(classes), (bad[g],)))
        else:
            groups.append(_group(cx, leaves, name, comp, slices[g], len(classes), classes))
    groups.sort(key=lambda t: t.kind != "stream")    # stable: order of appearance kept
    return groups, refused
