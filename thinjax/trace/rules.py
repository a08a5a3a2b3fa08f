"""How channel ids travel through each JAX primitive (`RULES`, read by `walk`).

A rule gets the equation and its operands' `Val`s and returns its results'. Primitives
without a rule are refused: the channels reaching them are fixed and the equation is named
in the report (`Context.refuse`), never guessed.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from thinjax.trace.channels import Axis, carries, reshape
from thinjax.trace.walk import Context, Rule, Val

ELEMENTWISE = frozenset("""
abs acos acosh add add_any and asin asinh atan atan2 atanh cbrt ceil clamp conj
convert_element_type copy copy_p cos cosh digamma div eq erf erf_inv erfc exp exp2 expm1
floor ge gt igamma igammac imag integer_pow is_finite le lgamma log log1p logistic lt max
min mul ne neg nextafter not or population_count pow real reduce_precision rem round rsqrt
select_n shift_left shift_right_arithmetic shift_right_logical sign sin sinh sqrt square
stop_gradient sub tan tanh xor clz sharding_constraint mesh_cast pvary
""".split())
LAYOUT = frozenset("convert_element_type copy copy_p reduce_precision sharding_constraint "
                   "mesh_cast pvary".split())   # a weight stays a weight through these
SOURCES = frozenset("iota random_bits random_seed random_wrap random_unwrap random_fold_in "
                    "random_split threefry2x32 rng_bit_generator rng_uniform".split())
REDUCTIONS = frozenset("reduce_sum reduce_max reduce_min reduce_prod reduce_and reduce_or "
                       "reduce_xor argmax argmin".split())
CUMULATIVE = frozenset("cumsum cumprod cummax cummin cumlogsumexp".split())

RULES: dict[str, Rule] = {}


def _shape(x: Any) -> tuple[int, ...]:
    return tuple(x.aval.shape)


def _zeros(n: int) -> np.ndarray:
    return np.zeros(int(n), np.int64)


def align(cx: Context, eqn: Any, vals: list[Val], skip: tuple[int, ...] = ()) -> list[Axis]:
    """The results' axes of an element-wise combination of `vals` (operands of the
    result's rank; a size-1 operand axis broadcasts and constrains nothing); every other
    operand axis is united with the first that holds ids. Axes in `skip` are left None."""
    shape = _shape(eqn.outvars[0])
    why = cx.where(eqn)
    out: list[Axis] = []
    for d, n in enumerate(shape):
        first = None
        for v, x in zip(vals, eqn.invars):
            s = _shape(x)
            if d in skip or len(s) != len(shape) or s[d] != n:
                continue
            a = v.ids[d]
            if a is None:
                continue
            if first is None:
                first = a
            else:
                cx.ch.unite(first, a, why)
        out.append(first)
    return out


def elementwise(cx: Context, eqn: Any, vals: list[Val]) -> list[Val]:
    ids = tuple(align(cx, eqn, vals))
    param = eqn.primitive.name in LAYOUT and vals[0].param
    return [Val(ids, param) for _ in eqn.outvars]


def source(cx: Context, eqn: Any, vals: list[Val]) -> list[Val]:
    return [Val(tuple(_zeros(n) for n in _shape(o))) for o in eqn.outvars]


def broadcast_in_dim(cx: Context, eqn: Any, vals: list[Val]) -> list[Val]:
    shape, dims = eqn.params["shape"], eqn.params["broadcast_dimensions"]
    src = _shape(eqn.invars[0])
    out: list[Axis] = [None] * len(shape)
    for i, d in enumerate(dims):
        if src[i] == shape[d]:
            out[d] = vals[0].ids[i]
    return [Val(tuple(out), vals[0].param)]


def reshape_rule(cx: Context, eqn: Any, vals: list[Val]) -> list[Val]:
    src, dst = _shape(eqn.invars[0]), _shape(eqn.outvars[0])
    if eqn.params.get("dimensions") is not None or 0 in src:
        return cx.refuse(eqn, vals, "a reshape with a permutation or an empty axis")
    return [Val(reshape(cx.ch, vals[0].ids, src, dst, cx.where(eqn)), vals[0].param)]


def transpose(cx: Context, eqn: Any, vals: list[Val]) -> list[Val]:
    ids = vals[0].ids
    return [Val(tuple(ids[p] for p in eqn.params["permutation"]), vals[0].param)]


def squeeze(cx: Context, eqn: Any, vals: list[Val]) -> list[Val]:
    drop = {d % len(vals[0].ids) for d in eqn.params["dimensions"]}
    return [Val(tuple(a for d, a in enumerate(vals[0].ids) if d not in drop), vals[0].param)]


def reduction(cx: Context, eqn: Any, vals: list[Val]) -> list[Val]:
    axes = set(eqn.params["axes"])
    for d in axes:
        cx.ch.mark_inexact(vals[0].ids[d], f"{cx.where(eqn)}: reduces over channels (a "
                                           "statistic over channels changes when some go)")
    return [Val(tuple(a for d, a in enumerate(vals[0].ids) if d not in axes))]


def cumulative(cx: Context, eqn: Any, vals: list[Val]) -> list[Val]:
    a = vals[0].ids[eqn.params["axis"]]
    if carries(a):
        cx.ch.fix(a, f"{cx.where(eqn)}: a cumulative operation along channels")
    return [Val(vals[0].ids)]


def _cut(cx: Context, eqn: Any, a: Axis, what: str, bounds: bool = True) -> None:
    """Fixes the channels of `a`, cut by `what` ("a slice" of a channel axis, ...)."""
    if carries(a):
        cx.ch.fix(a, f"{cx.where(eqn)}: {what} of a channel axis" + (
            " (its bounds are written in the model: they cannot follow pruning)"
            if bounds else ""))


def slice_rule(cx: Context, eqn: Any, vals: list[Val]) -> list[Val]:
    p, src = eqn.params, _shape(eqn.invars[0])
    strides = p["strides"] or (1,) * len(src)
    out = []
    for d, a in enumerate(vals[0].ids):
        s, e, st = p["start_indices"][d], p["limit_indices"][d], strides[d]
        if (s, e, st) != (0, src[d], 1):
            _cut(cx, eqn, a, "a slice")
            a = None if a is None else a[s:e:st]
        out.append(a)
    return [Val(tuple(out))]


def split(cx: Context, eqn: Any, vals: list[Val]) -> list[Val]:
    axis, ids = eqn.params["axis"], vals[0].ids
    _cut(cx, eqn, ids[axis], "a split")
    outs, start = [], 0
    for n in eqn.params["sizes"]:
        a = None if ids[axis] is None else ids[axis][start:start + n]
        outs.append(Val(ids[:axis] + (a,) + ids[axis + 1:]))
        start += n
    return outs


def dynamic_slice(cx: Context, eqn: Any, vals: list[Val]) -> list[Val]:
    src, sizes = _shape(eqn.invars[0]), eqn.params["slice_sizes"]
    out = []
    for d, a in enumerate(vals[0].ids):
        if sizes[d] != src[d]:
            _cut(cx, eqn, a, "a dynamic slice")
            a = _zeros(sizes[d])
        out.append(a)
    return [Val(tuple(out))]


def dynamic_update_slice(cx: Context, eqn: Any, vals: list[Val]) -> list[Val]:
    src, upd = _shape(eqn.invars[0]), _shape(eqn.invars[1])
    for d in range(len(src)):
        if src[d] != upd[d]:
            for v in vals[:2]:
                _cut(cx, eqn, v.ids[d], "a dynamic update")
    return [Val(tuple(align(cx, eqn, vals[:2])))]


def concatenate(cx: Context, eqn: Any, vals: list[Val]) -> list[Val]:
    dim = eqn.params["dimension"]
    out = align(cx, eqn, vals, skip=(dim,))
    out[dim] = np.concatenate([v.ids[dim] if v.ids[dim] is not None
                               else _zeros(_shape(x)[dim]) for v, x in zip(vals, eqn.invars)])
    return [Val(tuple(out))]


def pad(cx: Context, eqn: Any, vals: list[Val]) -> list[Val]:
    out, shape = [], _shape(eqn.outvars[0])
    for d, (lo, hi, mid) in enumerate(eqn.params["padding_config"]):
        a = vals[0].ids[d]
        if (lo, hi, mid) != (0, 0, 0):
            _cut(cx, eqn, a, "padding")
            a = None if a is None else _zeros(shape[d])
        out.append(a)
    return [Val(tuple(out))]


def rev(cx: Context, eqn: Any, vals: list[Val]) -> list[Val]:
    out = list(vals[0].ids)
    for d in eqn.params["dimensions"]:
        _cut(cx, eqn, out[d], "a reversal")
        out[d] = None if out[d] is None else out[d][::-1]
    return [Val(tuple(out))]


def gather(cx: Context, eqn: Any, vals: list[Val]) -> list[Val]:
    """A gather that takes whole channel axes (an embedding lookup, nearest-neighbour
    resizing): those axes pass; an indexed channel axis is fixed."""
    dn, sizes = eqn.params["dimension_numbers"], eqn.params["slice_sizes"]
    src, shape = _shape(eqn.invars[0]), _shape(eqn.outvars[0])
    out: list[Axis] = [_zeros(n) for n in shape]
    skipped = set(dn.collapsed_slice_dims) | set(getattr(dn, "operand_batching_dims", ()))
    kept = [d for d in range(len(src)) if d not in skipped]
    for d, o in zip(kept, dn.offset_dims):
        a = vals[0].ids[d]
        if d in dn.start_index_map or sizes[d] != src[d]:
            _cut(cx, eqn, a, "a gather indexing", bounds=False)
        else:
            out[o] = a
    for d in skipped:
        _cut(cx, eqn, vals[0].ids[d], "a gather indexing", bounds=False)
    for a in vals[1].ids:
        _cut(cx, eqn, a, "gather indices made", bounds=False)
    return [Val(tuple(out))]


def window(cx: Context, eqn: Any, vals: list[Val]) -> list[Val]:
    """Pooling (reduce_window*): windowed axes hold no channel afterwards; a window over
    a channel axis fixes its channels."""
    p, n = eqn.params, len(eqn.outvars)
    base = p.get("base_dilation") or (1,) * len(p["window_dimensions"])
    dil = p.get("window_dilation") or (1,) * len(p["window_dimensions"])
    outs = []
    for v, o in zip(vals[:n], eqn.outvars):
        ids = []
        for d, a in enumerate(v.ids):
            plain = (p["window_dimensions"][d], p["window_strides"][d], tuple(p["padding"][d]),
                     base[d], dil[d]) == (1, 1, (0, 0), 1, 1)
            if not plain:
                if carries(a):
                    cx.ch.fix(a, f"{cx.where(eqn)}: a pooling window over a channel axis")
                a = _zeros(_shape(o)[d])
            ids.append(a)
        outs.append(Val(tuple(ids)))
    return outs


for _names, _rule in ((ELEMENTWISE, elementwise), (SOURCES, source),
                      (REDUCTIONS, reduction), (CUMULATIVE, cumulative)):
    RULES.update({n: _rule for n in _names})
RULES.update({
    "broadcast_in_dim": broadcast_in_dim, "reshape": reshape_rule, "transpose": transpose,
    "squeeze": squeeze, "slice": slice_rule, "split": split, "dynamic_slice": dynamic_slice,
    "dynamic_update_slice": dynamic_update_slice, "concatenate": concatenate, "pad": pad,
    "rev": rev, "gather": gather, "reduce_window_sum": window, "reduce_window_max": window,
    "reduce_window_min": window, "reduce_window": window,
})
