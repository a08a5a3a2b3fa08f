"""Masks on traced channel groups, applied by tree path: what a training run does with a
traced network's masks (`thinjax.prune.groups.mask_tree` does it for a plan).

A traced group's members are ``(collection, path, axis, rows)`` slices
(`thinjax.trace.graph.Slice`): channel j sits at indices ``rows[j]`` of that axis. Every
tree whose leaves are named like the variables (params, batch statistics, their EMA, the
optimizer state mirroring params) is masked, gated or sliced through its dict-key path
(``stem/conv/kernel``), so one description serves all of them:

  * `mask_tree` zeroes every member of every pruned channel (jit-able): the masked network;
  * `gate_slices` / `gated`: the parameters whose scaling by m scales a group's output by
    m (a producer's norm, else the producer itself): Taylor's gates;
  * `path_keep` / `slice_tree` / `slice_opt_state`: the materialised network's trees.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from thinjax.errors import TraceError
from thinjax.prune.groups import _param_suffix
from thinjax.trace.graph import Leaf, Slice, TracedGroup

# tree path (no collection) -> ((axis, group, rows), ...)
Axes = dict[str, tuple[tuple[int, str, np.ndarray], ...]]


def leaf_axes(groups: Mapping[str, TracedGroup]) -> Axes:
    """Where each group's channels sit in each leaf, by the leaf's path in its collection
    (a path in two collections would be ambiguous: refused)."""
    out: dict[str, list] = {}
    cols: dict[str, str] = {}
    for n, g in groups.items():
        for s in g.slices:
            if cols.setdefault(s.path, s.col) != s.col:
                raise TraceError(f"{s.path} names a variable in both {cols[s.path]} and "
                                 f"{s.col}: masks are applied by path; rename one")
            out.setdefault(s.path, []).append((s.axis, n, s.rows))
    return {k: tuple(v) for k, v in out.items()}


def _scale(x: jax.Array, axis: int, rows: np.ndarray, m: jax.Array) -> jax.Array:
    """`x` with the indices of channel j (``rows[j]``) on `axis` multiplied by ``m[j]``
    (in numpy where both are numpy arrays: on the host, op by op, jnp is slow)."""
    size, mult = rows.shape
    idx = np.full(x.shape[axis], size)
    idx[rows.ravel()] = np.repeat(np.arange(size), mult)
    shape = [1] * x.ndim
    shape[axis] = -1
    if isinstance(x, np.ndarray) and isinstance(m, np.ndarray):
        ext = np.concatenate([m.astype(np.float32), np.ones((1,), np.float32)])
        return x * ext[idx].reshape(shape).astype(x.dtype)
    ext = jnp.concatenate([jnp.asarray(m, jnp.float32), jnp.ones((1,), jnp.float32)])
    return x * jnp.reshape(ext[idx], shape).astype(x.dtype)


def mask_tree(axes: Axes, tree: Any, masks: Mapping[str, Any]) -> Any:
    """`tree` with every member of every masked channel zeroed (`axes`: `leaf_axes`);
    leaves no group touches pass through. Works under jit."""
    def f(path, x):
        spec = axes.get(_param_suffix(path))
        if spec is None or not hasattr(x, "ndim") or x.ndim == 0:
            return x
        for axis, g, rows in spec:
            if x.ndim > axis:
                x = _scale(x, axis, rows, masks[g])
        return x
    return jax.tree_util.tree_map_with_path(f, tree)


def _module(path: str) -> str:
    return path.rsplit("/", 1)[0] if "/" in path else ""


def gate_slices(g: TracedGroup) -> tuple[Slice, ...]:
    """The params slices a gate on `g`'s channels scales: for each producing layer, the
    per-channel scale and shift of the layers beside it in its parent module, or the
    parent's own (a norm or layer scale after it: ``block/bn2`` beside ``block/conv2``),
    else its own kernel and bias. Scaling a norm's scale and shift by m scales its output
    by m (Molchanov et al. 2019 gate BatchNorm outputs this way)."""
    prods = set(g.producers)
    params = [s for s in g.slices if s.col == "params" and (s.path, s.axis) in prods]
    kernels = {_module(p) for p, _ in g.kernel_axes}
    out: list[Slice] = []
    for k in dict.fromkeys(_module(p) for p, _ in g.kernel_axes):
        parent = _module(k)
        after = [s for s in params if _module(s.path) not in kernels
                 and parent in (_module(s.path), _module(_module(s.path)))]
        out += [s for s in (after or [s for s in params if _module(s.path) == k])
                if s not in out]
    return tuple(out)


def gated(variables: Any, gates: Mapping[str, tuple[Slice, ...]],
          m: Mapping[str, jax.Array]) -> Any:
    """`variables` (``{'params', ...}``) with each group's gate slices scaled by ``m[g]``."""
    by_key: dict[str, list[tuple[Slice, str]]] = {}
    for n, slices in gates.items():
        for s in slices:
            by_key.setdefault(f"{s.col}/{s.path}", []).append((s, n))

    def f(path, x):
        for s, n in by_key.get(_param_suffix(path), ()):
            x = _scale(x, s.axis, s.rows, m[n])
        return x
    return jax.tree_util.tree_map_with_path(f, variables)


# -- the materialised network's trees ------------------------------------------------------

PathKeep = dict[str, tuple[tuple[int, np.ndarray], ...]]


def path_keep(leaves: tuple[Leaf, ...], keep: dict[int, dict[int, np.ndarray]]) -> PathKeep:
    """`thinjax.trace.rebuild.keep_axes`' leaf numbers -> leaf paths (no collection)."""
    return {leaves[k].path: tuple(axes.items()) for k, axes in keep.items()}


def slice_leaf(pk: PathKeep, path: str, x: Any) -> np.ndarray:
    x = np.asarray(x)
    for axis, kept in pk.get(path, ()):
        if x.ndim > axis:
            x = np.compress(kept, x, axis=axis)
    return x


def slice_tree(pk: PathKeep, tree: Any) -> Any:
    """`tree` (params, batch statistics, their EMA) without the pruned indices."""
    return jax.tree_util.tree_map_with_path(
        lambda p, x: slice_leaf(pk, _param_suffix(p), x), tree)


def slice_opt_state(pk: PathKeep, opt_state: Any, new_init: Any) -> Any:
    """The optimizer state of the smaller network: `new_init` (its ``tx.init``) filled
    from `opt_state`, the leaves that mirror params sliced like them, the others copied
    (as `thinjax.prune.materialize.slice_opt_state` does for a plan)."""
    old = {jax.tree_util.keystr(p): x for p, x in
           jax.tree_util.tree_flatten_with_path(opt_state)[0]}

    def fill(path, template):
        k = jax.tree_util.keystr(path)
        if k not in old:
            raise TraceError(f"optimizer state leaf {k} has no counterpart in the unpruned "
                             "state (was it made by the same optimizer?)")
        y = slice_leaf(pk, _param_suffix(path), old[k])
        if np.shape(y) != np.shape(template):
            raise TraceError(f"optimizer state leaf {k}: sliced shape {np.shape(y)} differs "
                             f"from the new optimizer's {np.shape(template)}")
        return y
    return jax.tree_util.tree_map_with_path(fill, new_init)
