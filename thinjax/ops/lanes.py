"""Per-channel elementwise work on channel-minor activations, in a lane-dense view.

XLA:CPU emits an elementwise fusion over an ``(N, H, W, C)`` array as a loop nest whose
innermost loop runs over the C channels. When C is a multiple of the vector width (8
float32 values in the 256-bit vectors it prefers) that loop becomes vector instructions;
for any other C (a pruned network with ``round_to 1``: 9, 13, 25, ... channels) LLVM
unrolls it into scalar code. That costs little for a memory-bound add or ReLU, but a
division (`thinjax.models.resnet.fusion_barrier`'s, and its transpose in the backward
pass) or a per-channel reduction (BatchNorm's statistics) runs up to 8x slower: in a
ResNet-56 training step pruned with ``round_to 1``, the backward pass's ReLU/add/divide
fusions of 13-channel stages took 4x the time of the 16-channel ones of the ``round_to 8``
network of the same MACs.

The lane view is the same memory read as ``(N*H*W / k, k*C)``: k consecutive pixels per
row, k the smallest power of 2 that makes ``k*C`` a multiple of `LANES` (1 when C
already is one; less where ``N*H*W`` has fewer factors of 2). Reshaping a row-major
array is free (XLA makes it a bitcast, and cancels a reshape back followed by a reshape
forth), a per-channel vector becomes ``tile(v, k)`` (column j holds channel ``j % C``), and a
per-channel sum is the column sum folded over k. Values are the same; only the order of
the terms of a per-channel sum changes (float32 rounding).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax.numpy as jnp

__all__ = ["LANES", "channel_sum", "from_lanes", "lane_factor", "lanewise", "per_channel",
           "to_lanes"]

LANES = 8  # float32 values in a 256-bit vector, the width XLA:CPU vectorizes loops to


def lane_factor(shape: tuple[int, ...]) -> int:
    """k: pixels per lane-view row for a channel-minor array of `shape` (a power of 2;
    1 when the channel count is a multiple of `LANES` or nothing would divide evenly, and
    for a single channel, whose work is small and whose reshape thinjax.trace cannot
    follow: a size-1 axis carries no channel ids)."""
    c, rows = shape[-1], math.prod(shape[:-1])
    if c <= 1 or rows == 0:
        return 1
    return math.gcd(LANES // math.gcd(c, LANES), rows)


def to_lanes(x, k: int):
    """`x` (..., C) as its lane view (rows, k*C): the same memory, no copy; `x` itself
    when k is 1 (then the lane view is the channel-minor array as it is)."""
    return x if k == 1 else x.reshape(-1, k * x.shape[-1])


def from_lanes(v, shape: tuple[int, ...]):
    """The lane view `v` back in the channel-minor `shape`."""
    return v.reshape(shape)


def per_channel(vector, k: int, hold: Callable | None = None):
    """A per-channel vector (C,) for the columns of a lane view (k*C,): `vector` tiled
    k times (`vector` itself when k is 1), passed through `hold` if given.

    Tiled as it is, XLA:CPU fuses the tiling, and whatever per-channel arithmetic made
    `vector`, into each consumer, where every element then fetches its constant through
    ``column % C`` and a gather (several times the cost of the elementwise work itself).
    `hold` (`thinjax.ops.conv.boundary`, with oneDNN's kernels) makes it a small array
    computed once that the consumers load contiguously."""
    if k == 1:
        return vector
    # broadcast + reshape, not jnp.tile: primitives thinjax.trace follows
    tiled = jnp.broadcast_to(vector, (k,) + vector.shape).reshape(-1)
    return tiled if hold is None else hold(tiled)


def channel_sum(v, c: int):
    """Per-channel sums (C,) of a lane view `v` (rows, k*C), or of a channel-minor
    array."""
    s = jnp.sum(v, axis=tuple(range(v.ndim - 1)))
    return s if s.shape[0] == c else jnp.sum(s.reshape(-1, c), axis=0)


def lanewise(fn: Callable, *args, hold: Callable | None = None):
    """``fn(*args)`` for an elementwise `fn`, computed in the lane view: the
    channel-minor arrays among `args` (all of one shape, the first one's) go in as lane
    views, per-channel vectors (C,) tiled to match (`per_channel`, with `hold`), None
    and scalars as they are; `fn`'s result comes back in the channel-minor shape."""
    shape = next(a.shape for a in args if a is not None and jnp.ndim(a) >= 2)
    k = lane_factor(shape)
    if k == 1:
        return fn(*args)

    def view(a):
        if a is None or jnp.ndim(a) == 0:
            return a
        if a.shape == shape:
            return to_lanes(a, k)
        if a.shape == shape[-1:]:
            return per_channel(a, k, hold)
        raise ValueError(f"lanewise: operand of shape {a.shape} is neither {shape} nor a "
                         f"per-channel vector {shape[-1:]}")

    return from_lanes(fn(*[view(a) for a in args]), shape)

