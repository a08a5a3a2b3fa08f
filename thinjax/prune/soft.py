"""Soft filter pruning (He et al., IJCAI 2018): zero the lowest-scoring filters, keep them
trainable.

At each soft event of the ``soft`` schedule (`thinjax.prune.schedule.is_soft`) the
criterion scores the current weights afresh (no previous masks: a filter zeroed at the last
event may have grown back and be kept now), the allocation picks the channels to remove for
the full target, and `soft_event` sets those channels' *producing conv filters* to zero —
nothing else. The masks are not kept: the forward pass stays dense, the zeroed filters get
gradients from the layers that read them and train on. The last event of the schedule is an
ordinary hard one (masks kept in the train state, pruned entries zeroed every step, then
materialised).

Only the filters are zeroed, as in the paper: zeroing a channel's BN shift and its
consumers' input slices as well would leave it with no gradient at all (a dead channel
never recovers), which would make the pruning hard.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from thinjax.plan import Plan
from thinjax.prune.groups import _param_suffix
from thinjax.prune.search import network_groups


def filter_axes(plan: Plan | Any) -> dict[str, tuple[int, str]]:
    """Producing kernel path -> (output axis, group): the entries a soft event zeroes
    (`plan`: a plan, or a traced network, `thinjax.trace.TracedNet`)."""
    return {k: (axis, n) for n, g in network_groups(plan).items()
            for k, axis in g.kernel_members}


def soft_event(plan: Plan | Any, state_like_variables: Any, masks: dict) -> Any:
    """`state_like_variables` with the producing conv filters of every channel that `masks`
    removes set to zero. Any tree whose leaf paths end in the parameters' paths works:
    ``{'params': ..., 'batch_stats': ...}``, a TrainState's params, EMA or optimizer state.
    Pure and jit-able; the masks are used, not kept."""
    axes = filter_axes(plan)

    def zero(path, x):
        parts = _param_suffix(path).split("/")
        hit = next((axes[k] for k in ("/".join(parts[i:]) for i in range(len(parts)))
                    if k in axes), None)
        if hit is None or getattr(x, "ndim", 0) <= hit[0]:
            return x
        axis, g = hit
        return x * jnp.reshape(jnp.asarray(masks[g]), (1,) * axis + (-1,)).astype(x.dtype)

    return jax.tree_util.tree_map_with_path(zero, state_like_variables)
