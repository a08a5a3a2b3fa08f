"""Channel identities: an id for every index of every axis of every variable leaf, the
union-find that couples them, and how ids travel through reshapes.

Every axis of every tensor in the traced computation carries an `Axis`: ``None`` where the
axis was broadcast from size 1 (it constrains nothing), else an int array with one entry
per index: an element id (> 0) where the index is a channel that some variable leaf owns,
or ``0`` where it is not a channel at all (a spatial or batch position, the input's
channels, a constant). Two ids meeting in one index (a residual add, a convolution's input
channels meeting its kernel's input axis) are united: their channels must be pruned
together. An id meeting a ``0`` is *fixed*: that channel (and everything coupled to it)
cannot be pruned, and the reason is kept for the report. A class may also be marked
*inexact*: prunable, but the pruned network computes something else than the masked one
(a reduction over channels, as LayerNorm's statistics).
"""

from __future__ import annotations

import math

import numpy as np

Axis = np.ndarray | None       # None: broadcast; else element ids per index (0: no channel)
Ids = tuple[Axis, ...]         # one Axis per dimension of a tensor


class Channels:
    """Union-find over channel elements (ids from 1), with a fixed and an inexact flag
    (and their reasons) per class."""

    def __init__(self) -> None:
        self.parent: list[int] = [0]
        self.owner: list[tuple[int, int, int]] = [(-1, -1, -1)]   # (leaf, axis, index)
        self.fixed: dict[int, list[str]] = {}     # root -> reasons
        self.inexact: dict[int, list[str]] = {}   # root -> reasons

    def new(self, leaf: int, axis: int, n: int) -> np.ndarray:
        """`n` fresh elements owned by axis `axis` of leaf number `leaf`."""
        start = len(self.parent)
        self.parent.extend(range(start, start + n))
        self.owner.extend((leaf, axis, i) for i in range(n))
        return np.arange(start, start + n, dtype=np.int64)

    def find(self, e: int) -> int:
        p = self.parent
        while p[e] != e:
            p[e] = p[p[e]]
            e = p[e]
        return e

    def roots(self, ids: np.ndarray) -> np.ndarray:
        """The class of each id (0 stays 0)."""
        return np.array([self.find(int(e)) if e else 0 for e in ids.ravel()],
                        np.int64).reshape(ids.shape)

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        if ra > rb:
            ra, rb = rb, ra
        self.parent[rb] = ra
        for flags in (self.fixed, self.inexact):
            if rb in flags:
                _note(flags, ra, flags.pop(rb))

    def unite(self, a: Axis, b: Axis, why: str) -> None:
        """Couples two axes index by index; an id meeting a non-channel index is fixed."""
        if a is None or b is None:
            return
        for x, y in {(int(x), int(y)) for x, y in zip(a, b)}:
            if x and y:
                self.union(x, y)
            elif x or y:
                self.fix(np.array([x or y]), why)

    def fix(self, ids: Axis, why: str) -> None:
        """Marks the classes of `ids` unprunable, for reason `why`."""
        self._flag(self.fixed, ids, why)

    def mark_inexact(self, ids: Axis, why: str) -> None:
        self._flag(self.inexact, ids, why)

    def _flag(self, flags: dict[int, list[str]], ids: Axis, why: str) -> None:
        if ids is None:
            return
        for r in {self.find(int(e)) for e in np.ravel(ids) if e}:
            _note(flags, r, [why])


def _note(flags: dict[int, list[str]], root: int, reasons: list[str]) -> None:
    have = flags.setdefault(root, [])
    for r in reasons:
        if r not in have and len(have) < 8:
            have.append(r)


def carries(a: Axis) -> bool:
    """Whether axis `a` holds at least one channel."""
    return a is not None and bool(np.any(a))


def fixed_axes(shape: tuple[int, ...]) -> Ids:
    """The ids of a tensor that holds no channel (all indices 0)."""
    return tuple(np.zeros(int(d), np.int64) for d in shape)


# -- reshapes ----------------------------------------------------------------------------

def _pairs(src: tuple[int, ...], dst: tuple[int, ...]) -> list[tuple[list[int], list[int]]]:
    """Groups of source and destination dimensions with equal products (size-1 dimensions
    alone), in order: how a row-major reshape maps dimensions."""
    out, i, j = [], 0, 0
    while i < len(src) or j < len(dst):
        if i < len(src) and src[i] == 1:
            out.append(([i], []))
            i += 1
            continue
        if j < len(dst) and dst[j] == 1:
            out.append(([], [j]))
            j += 1
            continue
        a, b, ia, ja = src[i], dst[j], [i], [j]
        i, j = i + 1, j + 1
        while a != b:
            if a < b:
                a, ia, i = a * src[i], ia + [i], i + 1
            else:
                b, ja, j = b * dst[j], ja + [j], j + 1
        out.append((ia, ja))
    return out


def _merge(ch: Channels, axes: list[Axis], sizes: list[int], why: str) -> Axis:
    """The ids of the row-major flattening of `axes`; two channel axes in one flattened
    axis cannot be followed (their channels are fixed)."""
    if all(a is None for a in axes):
        return None
    carriers = [k for k, a in enumerate(axes) if carries(a)]
    n = math.prod(sizes)
    if not carriers:
        return np.zeros(n, np.int64)
    if len(carriers) > 1:
        for k in carriers:
            ch.fix(axes[k], f"{why}: merges channel axes of sizes "
                            f"{[sizes[c] for c in carriers]} into one")
        return np.zeros(n, np.int64)
    k = carriers[0]
    shape = [1] * len(sizes)
    shape[k] = sizes[k]
    return np.broadcast_to(axes[k].reshape(shape), sizes).reshape(n).copy()


def _split(ch: Channels, flat: Axis, sizes: list[int], why: str) -> list[Axis]:
    """The ids of `flat` reshaped to `sizes`: the channels must vary along one of them."""
    if flat is None:
        return [None] * len(sizes)
    if len(sizes) == 1:
        return [flat]
    if not carries(flat):
        return [np.zeros(s, np.int64) for s in sizes]
    arr = flat.reshape(sizes)
    varying = [k for k in range(len(sizes))
               if not np.array_equal(arr, np.take(arr, [0], axis=k).repeat(sizes[k], k))]
    if len(varying) != 1:
        ch.fix(flat, f"{why}: splits a channel axis of size {flat.size} into {tuple(sizes)} "
                     "(attention heads or GroupNorm groups written as a reshape)")
        return [np.zeros(s, np.int64) for s in sizes]
    k = varying[0]
    index = [0] * len(sizes)
    index[k] = slice(None)
    return [arr[tuple(index)].copy() if d == k else np.zeros(s, np.int64)
            for d, s in enumerate(sizes)]


def reshape(ch: Channels, ids: Ids, src: tuple[int, ...], dst: tuple[int, ...],
            why: str) -> Ids:
    """The ids of a row-major reshape from `src` to `dst`."""
    out: list[Axis] = [None] * len(dst)
    for ia, ja in _pairs(tuple(src), tuple(dst)):
        if not ja:
            continue
        flat = _merge(ch, [ids[i] for i in ia], [src[i] for i in ia], why) if ia else None
        for j, a in zip(ja, _split(ch, flat, [dst[j] for j in ja], why)):
            out[j] = a
    return tuple(out)
