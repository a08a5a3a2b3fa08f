"""Masks -> a genuinely smaller NNX network, by surgery on a copy of the modules.

An NNX module holds its widths twice: in its arrays (`nnx.Param`, `nnx.BatchStat`) and
in plain Python attributes (``nnx.Conv.in_features``, ``kernel_shape``,
``feature_group_count``; ``nnx.BatchNorm.num_features``), some of which its
``__call__`` reads. `materialize` merges a fresh copy of the model (``nnx.merge(...,
copy=True)``: the user's module and its Variables are never touched) holding the sliced
arrays, then sets on every layer whose arrays shrank the attributes that its updater in
`LAYERS` computes from the new shapes. A module of a class with no updater that owns a
pruned array is never guessed at: `check_layers` leaves its channels whole unless the
class is registered with `thinjax.trace.register_layer` (the same registry as for linen:
the updater returns the attributes to set).

    small = materialize(trace.module, trace.leaves, keep, variables)
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from thinjax.errors import TraceError
from thinjax.trace import rebuild
from thinjax.trace.graph import Leaf, TracedGroup
from thinjax.trace.rebuild import Shapes, Updater

COLLECTIONS = (("params", nnx.Param), ("batch_stats", nnx.BatchStat))


def _kernel(shapes: Shapes) -> tuple[int, ...] | None:
    return shapes["kernel"][1] if "kernel" in shapes else None


def _conv(m: Any, shapes: Shapes) -> dict[str, Any]:
    """Conv: features and ``kernel_shape`` from the kernel; a depthwise conv (one input
    channel per group, the only grouped convolution the trace prunes) keeps one group per
    channel."""
    new = _kernel(shapes)
    if new is None:
        return {}
    out = {"kernel_shape": tuple(new), "out_features": new[-1], "in_features": new[-2]}
    if m.feature_group_count > 1:
        if m.in_features != m.feature_group_count or m.out_features != m.in_features:
            raise TraceError(f"nnx.Conv with feature_group_count={m.feature_group_count}, "
                             f"in_features={m.in_features}, out_features={m.out_features}: "
                             "only a depthwise conv with one output per input channel can "
                             "be pruned")
        out.update(in_features=new[-1], feature_group_count=new[-1])
    return out


def _conv_transpose(m: Any, shapes: Shapes) -> dict[str, Any]:
    new = _kernel(shapes)
    if new is None:
        return {}
    i, o = (-1, -2) if m.transpose_kernel else (-2, -1)
    return {"kernel_shape": tuple(new), "in_features": new[i], "out_features": new[o]}


def _linear(m: Any, shapes: Shapes) -> dict[str, Any]:
    new = _kernel(shapes)
    return {} if new is None else {"in_features": new[0], "out_features": new[1]}


def _linear_general(m: Any, shapes: Shapes) -> dict[str, Any]:
    """``in_features`` and ``out_features`` (tuples) from the kernel, laid out as
    ``(*batch, *in, *out)``."""
    new = _kernel(shapes)
    if new is None:
        return {}
    nb, ni = len(m.batch_axis), len(m.in_features)
    return {"in_features": tuple(new[nb:nb + ni]), "out_features": tuple(new[nb + ni:])}


def _einsum(m: Any, shapes: Shapes) -> dict[str, Any]:
    out = {} if "kernel" not in shapes else {"kernel_shape": tuple(shapes["kernel"][1])}
    if "bias" in shapes:
        out["bias_shape"] = tuple(shapes["bias"][1])
    return out


def _embed(m: Any, shapes: Shapes) -> dict[str, Any]:
    if "embedding" not in shapes:
        return {}
    n, f = shapes["embedding"][1]
    return {"num_embeddings": n, "features": f}


def _norm(m: Any, shapes: Shapes) -> dict[str, Any]:
    """BatchNorm, LayerNorm, RMSNorm: ``num_features`` from any of their own arrays."""
    own = [new for name, (_, new) in shapes.items() if "/" not in name]
    return {"num_features": own[0][-1]} if own else {}


def _group_norm(m: Any, shapes: Shapes) -> dict[str, Any]:
    """GroupNorm (no `num_features`: its groups' number and size): the trace prunes it
    only with one group or one channel per group."""
    out = _norm(m, shapes)
    if not out:
        return out
    n = out["num_features"]
    if m.num_groups == 1:
        return {"group_size": n}
    if m.group_size == 1:
        return {"num_groups": n}
    raise TraceError(f"nnx.GroupNorm with {m.num_groups} groups of {m.group_size}: its "
                     "groups cannot follow the pruning")


def _attention(m: Any, shapes: Shapes) -> dict[str, Any]:
    """Heads, head size and feature counts from the query, key and out kernels (the
    children are rebuilt on their own; these attributes only have to agree)."""
    if "query/kernel" not in shapes:
        return {}
    q, k = shapes["query/kernel"][1], shapes["key/kernel"][1]
    out = {"in_features": q[0], "in_kv_features": k[0], "num_heads": q[-2],
           "num_kv_heads": k[-2], "head_dim": q[-1], "qkv_features": q[-2] * q[-1]}
    if "out/kernel" in shapes:
        out["out_features"] = shapes["out/kernel"][1][-1]
    return out


LAYERS: dict[type, Updater] = {
    nnx.Conv: _conv, nnx.ConvTranspose: _conv_transpose, nnx.Linear: _linear,
    nnx.LinearGeneral: _linear_general, nnx.Einsum: _einsum, nnx.Embed: _embed,
    nnx.BatchNorm: _norm, nnx.LayerNorm: _norm, nnx.RMSNorm: _norm,
    nnx.GroupNorm: _group_norm, nnx.MultiHeadAttention: _attention,
}


def updater_of(cls: type) -> Updater | None:
    """The updater of an NNX layer class: the most derived class that is in this table or
    registered (`thinjax.trace.register_layer`) decides."""
    for t in cls.__mro__:
        for table in (rebuild.LAYERS, LAYERS):
            if t in table:
                return table[t]
    return None


def module_classes(model: nnx.Module) -> dict[str, type]:
    """'/'-joined path -> class of every module in `model` (the top is '')."""
    return {"/".join(map(str, p)): type(m) for p, m in nnx.iter_modules(model)}


def _head_size(path: str, axis: int, modules: dict[str, type]) -> str | None:
    """Why axis `axis` of `path` cannot shrink: it is a head size of an
    nnx.MultiHeadAttention (query, key and value kernels: axis 2, biases: axis 1)."""
    parts = path.split("/")
    if len(parts) < 3 or parts[-2] not in ("query", "key", "value"):
        return None
    cls = modules.get("/".join(parts[:-2]))
    if cls is None or not issubclass(cls, nnx.MultiHeadAttention) \
            or axis != {"kernel": 2, "bias": 1}.get(parts[-1]):
        return None
    return (f"{path} (axis {axis}) is a head size of nnx.MultiHeadAttention, which calls "
            "jax.nn.dot_product_attention: query, key and value need one head size (heads "
            "can be pruned, head sizes cannot)")


def check_layers(groups: list[TracedGroup], modules: dict[str, type]) -> dict[str, str]:
    """Groups with a member in a module thinjax cannot rebuild (name -> why)."""
    bad = {}
    for g in groups:
        for s in g.slices:
            head = _head_size(s.path, s.axis, modules)
            if head:
                bad[g.name] = head
                break
            where = s.path.rsplit("/", 1)[0] if "/" in s.path else ""
            cls = modules.get(where)
            if cls is None or updater_of(cls) is None:
                name = "no module (a bare Variable)" if cls is None else cls.__name__
                bad[g.name] = (f"{s.col}/{s.path} belongs to {name}, whose width attributes "
                               "thinjax cannot update: build it from nnx layers (nnx.Conv, "
                               "nnx.Linear, nnx.LayerNorm, ...) or register it "
                               "(thinjax.trace.register_layer)")
                break
    return bad


def split(model: nnx.Module) -> tuple[Any, dict[str, Any], list[Any]]:
    """(graphdef, {"params": ..., "batch_stats": ...} as pure dicts of arrays, the other
    states): a linen-style variables tree, so the trace, criteria and slicing read NNX
    models as they read linen ones."""
    graphdef, *states = nnx.split(model, *(t for _, t in COLLECTIONS), ...)
    variables = {c: _str_keys(nnx.to_pure_dict(s)) for (c, _), s in zip(COLLECTIONS, states)
                 if jax.tree_util.tree_leaves(s)}
    return graphdef, variables, states


def _str_keys(tree: Any) -> Any:
    """A pure dict with its keys as strings (a list's items are 0, 1, ...: paths join)."""
    if isinstance(tree, dict):
        return {str(k): _str_keys(v) for k, v in tree.items()}
    return tree


def merge(graphdef: Any, states: list[Any], variables: dict[str, Any]) -> nnx.Module:
    """A new module (new Variables) from `split`'s parts with `variables`' arrays."""
    fresh = [jax.tree_util.tree_map(lambda x: x, s) for s in states]
    for (col, _), s in zip(COLLECTIONS, fresh):
        if col in variables:
            nnx.replace_by_pure_dict(s, variables[col])
    return nnx.merge(graphdef, *fresh, copy=True)


def with_variables(model: nnx.Module, variables: dict[str, Any]) -> nnx.Module:
    """A copy of `model` whose params and batch statistics are `variables` (a tree as
    `split` gives; e.g. `thinjax.trace.mask_variables`' masked one)."""
    graphdef, _, states = split(model)
    return merge(graphdef, states, variables)


def _set(mod: Any, path: str, shapes: Shapes) -> None:
    up = updater_of(type(mod))
    if up is None:   # only its children shrank (own arrays: refused by check_layers)
        return
    try:
        attrs = up(mod, shapes)
    except TraceError as e:
        raise TraceError(f"{type(mod).__name__} at {path or 'the top'}: {e}") from None
    for k, v in attrs.items():
        if not hasattr(mod, k):
            raise TraceError(f"{type(mod).__name__} at {path or 'the top'}: its updater "
                             f"sets {k!r}, which it has no attribute of")
        setattr(mod, k, v)


def materialize(model: nnx.Module, leaves: tuple[Leaf, ...],
                keep: dict[int, dict[int, np.ndarray]], variables: dict[str, Any]
                ) -> nnx.Module:
    """A new `model` keeping the indices `keep` says (`rebuild.keep_axes`) of its arrays,
    with its layers' width attributes updated."""
    small = jax.tree_util.tree_map(jnp.asarray,
                                   rebuild.slice_variables(leaves, keep, variables))
    out = with_variables(model, small)
    table = {p: {n: (o, s) for n, o, s in v} for p, v in rebuild.new_shapes(leaves, keep)}
    for parts, mod in nnx.iter_modules(out):
        path = "/".join(map(str, parts))
        shapes = table.get(path, {})
        if any(o != n for o, n in shapes.values()):
            _set(mod, path, shapes)
    return out
