"""Masks -> a genuinely smaller linen network: sliced variables and the module rebuilt.

A linen module's widths live in its code (``nn.Conv(64, ...)`` inside a compact method)
as often as in its fields, so re-instantiating the top module with other fields cannot
rebuild it. Instead `Pruned` runs the original module under ``nn.intercept_methods``:
when a layer whose variables shrank is called, the interceptor calls a clone of it with
the new widths (``features``; a depthwise conv's ``feature_group_count`` too), bound to
the very same scope, so its variables keep their paths (a layer that makes its variables
in ``setup``, as nn.Embed, gets the new fields on the instance bound for this call, before
its setup runs). Layers whose variables take
their shapes from their input (BatchNorm, LayerNorm) need no change. A layer of a class
that is not in `LAYERS` is never guessed at: its channels stay whole (`check_layers`)
unless the class is registered with `register_layer`.

    model, small = materialize(trace, masks, variables)
    model.apply(small, x) == trace.module.apply(mask_variables(trace, masks, variables), x)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import numpy as np

from thinjax.errors import TraceError
from thinjax.models.batchnorm import BatchNorm
from thinjax.models.examples import TRACED_LAYERS as EXAMPLE_LAYERS
from thinjax.models.resnet import Conv as ResNetConv
from thinjax.trace.graph import Leaf, TracedGroup

Shapes = dict[str, tuple[tuple[int, ...], tuple[int, ...]]]   # name -> (old, new)
Updater = Callable[[nn.Module, Shapes], dict[str, Any]]


def _features(m: nn.Module, shapes: Shapes) -> dict[str, Any]:
    return {"features": shapes["kernel"][1][-1]} if "kernel" in shapes else {}


def _conv(m: nn.Module, shapes: Shapes) -> dict[str, Any]:
    """``features`` from the kernel; a depthwise conv's groups (one per channel: the
    only grouped convolution whose channels the trace prunes) follow its channels."""
    out = _features(m, shapes)
    if out and getattr(m, "feature_group_count", 1) > 1:
        out["feature_group_count"] = out["features"]
    return out


def _dense_general(m: nn.Module, shapes: Shapes) -> dict[str, Any]:
    if "kernel" not in shapes:
        return {}
    f, new = m.features, shapes["kernel"][1]
    return {"features": new[-1] if isinstance(f, int) else tuple(new[-len(f):])}


def _embed(m: nn.Module, shapes: Shapes) -> dict[str, Any]:
    return {"features": shapes["embedding"][1][-1]} if "embedding" in shapes else {}


def _follows_input(m: nn.Module, shapes: Shapes) -> dict[str, Any]:
    return {}


def _attention(m: nn.Module, shapes: Shapes) -> dict[str, Any]:
    """Heads and head size from the query's kernel (its children are rebuilt on their
    own; these fields only have to agree with them)."""
    if "query/kernel" not in shapes:
        return {}
    heads, dim = shapes["query/kernel"][1][-2:]
    out = {"num_heads": heads, "qkv_features": heads * dim}
    if m.out_features is not None and "out/kernel" in shapes:
        out["out_features"] = shapes["out/kernel"][1][-1]
    return out


LAYERS: dict[type, Updater] = {
    nn.Conv: _conv, nn.ConvTranspose: _conv, ResNetConv: _features, nn.Dense: _features,
    nn.DenseGeneral: _dense_general, nn.Embed: _embed, nn.BatchNorm: _follows_input,
    nn.LayerNorm: _follows_input, nn.RMSNorm: _follows_input, nn.GroupNorm: _follows_input,
    BatchNorm: _follows_input, nn.MultiHeadDotProductAttention: _attention,
    **{cls: _follows_input for cls in EXAMPLE_LAYERS},   # thinjax.models.examples
}


def register_layer(cls: type, updater: Updater | None = None) -> None:
    """Lets the trace prune the variables of your layer class `cls`: `updater(module,
    {name: (old shape, new shape)})` returns the fields to change (None: every variable's
    shape follows the layer's input, as in BatchNorm). The names are relative to the
    module: ``kernel`` for its own variables, ``query/kernel`` for a child's."""
    LAYERS[cls] = updater or _follows_input


def updater_of(cls: type) -> Updater | None:
    return next((LAYERS[t] for t in cls.__mro__ if t in LAYERS), None)


def check_layers(groups: list[TracedGroup], modules: dict[str, type]) -> dict[str, str]:
    """Groups with a member in a layer thinjax cannot rebuild (name -> why)."""
    bad = {}
    for g in groups:
        for s in g.slices:
            where = s.path.rsplit("/", 1)[0] if "/" in s.path else ""
            cls = modules.get(where)
            if cls is None or updater_of(cls) is None:
                name = "a module the trace did not see" if cls is None else cls.__name__
                bad[g.name] = (f"{s.col}/{s.path} belongs to {name}, whose widths thinjax "
                               "cannot rebuild: build it from flax layers (nn.Conv, nn.Dense, "
                               "nn.LayerNorm, ...) or register it (thinjax.trace.register_layer)")
                break
    return bad


def keep_axes(leaves: tuple[Leaf, ...], groups: dict[str, TracedGroup],
              masks: dict[str, np.ndarray]) -> dict[int, dict[int, np.ndarray]]:
    """Leaf number -> axis -> which indices stay (only the axes a mask cuts)."""
    out: dict[int, dict[int, np.ndarray]] = {}
    for name, m in masks.items():
        gone = np.asarray(m) <= 0
        if not gone.any():
            continue
        for s in groups[name].slices:
            keep = out.setdefault(s.leaf, {}).setdefault(
                s.axis, np.ones(leaves[s.leaf].shape[s.axis], bool))
            keep[s.rows[gone].ravel()] = False
    return out


def _map_leaves(variables: Any, f: Callable[[int, np.ndarray], np.ndarray]) -> Any:
    flat, treedef = jax.tree_util.tree_flatten(variables)
    return jax.tree_util.tree_unflatten(treedef, [f(k, np.asarray(x))
                                                  for k, x in enumerate(flat)])


def slice_variables(leaves: tuple[Leaf, ...], keep: dict[int, dict[int, np.ndarray]],
                    variables: Any) -> Any:
    """`variables` (numpy leaves) without the pruned indices."""
    def f(k: int, x: np.ndarray) -> np.ndarray:
        for axis, kept in keep.get(k, {}).items():
            x = np.compress(kept, x, axis=axis)
        return x
    return _map_leaves(variables, f)


def mask_variables(leaves: tuple[Leaf, ...], keep: dict[int, dict[int, np.ndarray]],
                   variables: Any) -> Any:
    """`variables` with the pruned indices of every member zeroed (the masked network)."""
    def f(k: int, x: np.ndarray) -> np.ndarray:
        for axis, kept in keep.get(k, {}).items():
            shape = [1] * x.ndim
            shape[axis] = -1
            x = x * kept.reshape(shape).astype(x.dtype)
        return x
    return _map_leaves(variables, f)


def new_shapes(leaves: tuple[Leaf, ...], keep: dict[int, dict[int, np.ndarray]]
               ) -> tuple[tuple[str, tuple[tuple[str, tuple, tuple], ...]], ...]:
    """`shapes_table` of `leaves` after slicing them by `keep`."""
    new = []
    for k, leaf in enumerate(leaves):
        axes = keep.get(k, {})
        new.append(tuple(int(axes[a].sum()) if a in axes else n
                         for a, n in enumerate(leaf.shape)))
    return shapes_table(leaves, new)


def shapes_table(leaves: tuple[Leaf, ...], new: list[tuple[int, ...]]
                 ) -> tuple[tuple[str, tuple[tuple[str, tuple, tuple], ...]], ...]:
    """Module path -> every variable under it (name relative to it), old and new shape:
    ((name, old, new), ...), `Pruned`'s table for `leaves` at shapes `new`. Unchanged ones
    too: a layer whose width its parent computes from a pruned input is set back to its
    variables' shapes."""
    out: dict[str, list] = {}
    for leaf, shape in zip(leaves, new, strict=True):
        parts = leaf.path.split("/")
        for i in range(len(parts)):
            out.setdefault("/".join(parts[:i]), []).append(
                ("/".join(parts[i:]), leaf.shape, tuple(shape)))
    return tuple((p, tuple(v)) for p, v in sorted(out.items()))


def _updates(mod: nn.Module, shapes: Shapes) -> dict[str, Any]:
    up = updater_of(type(mod))
    if up is not None:
        return up(mod, shapes)
    if any(o != n for k, (o, n) in shapes.items() if "/" not in k):
        raise TraceError(f"{type(mod).__name__} at {'/'.join(mod.path) or 'the top'}: its "
                           "variables shrank but thinjax cannot rebuild it; register it "
                           "(thinjax.trace.register_layer)")
    return {}


class Pruned(nn.Module):
    """`module` at new widths: a layer whose variables shrank (`shapes`: module path ->
    ((variable name, old shape, new shape), ...)) is called as a clone with the fields its
    `LAYERS` updater gives. Apply it like `module` (``__call__`` only); it is a top-level
    module (its variables have `module`'s paths)."""
    module: Any
    shapes: tuple = ()

    @nn.compact
    def __call__(self, *args, **kwargs):
        table = {p: {n: (o, s) for n, o, s in v} for p, v in self.shapes}
        root, made = len(self.path), {}   # the clones made here (kept alive: ids stay)

        def rebuild(next_fun, a, kw, ctx):
            mod = ctx.module
            shapes = table.get("/".join(mod.path[root:])) \
                if ctx.method_name in ("setup", "__call__") and made.get(id(mod)) is not mod \
                else None
            upd = {k: v for k, v in (_updates(mod, shapes) if shapes else {}).items()
                   if getattr(mod, k) != v}
            if upd and ctx.method_name == "setup":
                # a layer that makes its variables in setup (nn.Embed): this bound instance
                # is this call's own (linen binds a fresh one per apply); set its fields
                for k, v in upd.items():
                    object.__setattr__(mod, k, v)
            elif upd:
                clone = mod.clone(parent=mod.scope, **upd)
                made[id(clone)] = clone
                return getattr(clone, ctx.method_name)(*a, **kw)
            return next_fun(*a, **kw)

        with nn.intercept_methods(rebuild):
            return self.module.clone(parent=self.scope)(*args, **kwargs)
