"""Masks -> a genuinely smaller network: the smaller plan and sliced trees.

Every tree whose leaves are named like the model's parameters (params, batch statistics,
EMA, and the optimizer state that mirrors params) is sliced by one rule: along each axis
that a channel group occupies, keep that group's unmasked indices; the branch of a block
whose inner channels are all masked is dropped (the smaller plan marks it removed).

    small_plan, small_vars = materialize(plan, masks, variables)
    # ResNet(small_plan).apply(small_vars, x) == ResNet(plan).apply(variables, x, masks=masks)
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from thinjax.plan import Plan, PlanError
from thinjax.prune.groups import (
    _param_suffix,
    channel_groups,
    check_masks,
    flatten,
    leaf_axes,
    plan_with_counts,
    unflatten,
)


def keep_indices(masks: dict) -> dict[str, np.ndarray]:
    return {n: np.flatnonzero(np.asarray(m) > 0) for n, m in masks.items()}


def small_plan(plan: Plan, masks: dict) -> Plan:
    """The plan of the materialised network."""
    check_masks(plan, masks)
    counts = {n: len(i) for n, i in keep_indices(masks).items()}
    for n, g in channel_groups(plan).items():
        if counts[n] == 0 and not g.removable:
            raise PlanError(f"mask {n!r} removes all {g.size} channels, but this group cannot "
                            "fall to zero (" + ("a residual stream" if g.kind == "stream" else
                                                "its block has a projection shortcut") + ")")
    return plan_with_counts(plan, counts)


def _dropped(plan: Plan, new: Plan) -> tuple[str, ...]:
    """Path prefixes of branches removed by the materialisation."""
    out = []
    for (name, _, _, _, b), (_, _, _, _, nb) in zip(plan.blocks(), new.blocks()):
        if nb.removed and not b.removed:
            last = 3 if plan.block == "bottleneck" else 2
            out += [f"{name}/{k}{i}/" for i in range(1, last + 1) for k in ("conv", "bn")]
    return tuple(out)


def _slicer(plan: Plan, masks: dict, new: Plan):
    axes, keep, dropped = leaf_axes(plan), keep_indices(masks), _dropped(plan, new)

    def slice_leaf(path: str, x):
        if dropped and path.startswith(dropped):
            return None
        x = np.asarray(x)
        for axis, g in axes.get(path, ()):
            if x.ndim > axis:
                x = np.take(x, keep[g], axis=axis)
        return x

    return slice_leaf


def slice_tree(plan: Plan, masks: dict, tree: dict, new: Plan | None = None) -> dict:
    """A nested dict with model-style paths (params, batch_stats, EMA), sliced."""
    new = new or small_plan(plan, masks)
    f = _slicer(plan, masks, new)
    out = {}
    for path, x in flatten(tree).items():
        y = f(path, x)
        if y is not None:
            out[path] = y
    return unflatten(out)


def materialize(plan: Plan, masks: dict, variables: dict) -> tuple[Plan, dict]:
    """(smaller plan, {'params', 'batch_stats'} sliced to it)."""
    new = small_plan(plan, masks)
    return new, {k: slice_tree(plan, masks, v, new) for k, v in variables.items()}


def slice_opt_state(plan: Plan, masks: dict, opt_state: Any, new_init: Any,
                    new: Plan | None = None) -> Any:
    """Optimizer state for the smaller network: `new_init` (tx.init of the sliced params)
    filled leaf by leaf from `opt_state`, the leaves that mirror params sliced like them
    (momentum, Adam moments), the others (step counts) copied."""
    new = new or small_plan(plan, masks)
    f = _slicer(plan, masks, new)
    old = {jax.tree_util.keystr(p): x for p, x in
           jax.tree_util.tree_flatten_with_path(opt_state)[0]}

    def fill(path, template):
        k = jax.tree_util.keystr(path)
        if k not in old:
            raise ValueError(f"optimizer state leaf {k} has no counterpart in the unpruned "
                             "state (was it made by the same optimizer?)")
        y = f(_param_suffix(path), old[k]) if _param_suffix(path) else np.asarray(old[k])
        if np.shape(y) != np.shape(template):
            raise ValueError(f"optimizer state leaf {k}: sliced shape {np.shape(y)} differs "
                             f"from the new optimizer's {np.shape(template)}")
        return y

    return jax.tree_util.tree_map_with_path(fill, new_init)
