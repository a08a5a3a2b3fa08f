"""Nested computations: jit, closed calls, remat, custom_jvp / custom_vjp functions (the
walk goes into their jaxprs) and scan (its body once, the loop-carried channels united
with the carry's, its MACs times the trip count); `table` is the full rule table."""

from __future__ import annotations

from typing import Any

import numpy as np

from thinjax.ops.dense_conv import NAME as CONV2D
from thinjax.ops.depthwise import NAME as DEPTHWISE
from thinjax.trace import linear, rules
from thinjax.trace.walk import Context, Rule, Val, walk_closed

CALLS = {"jit": "jaxpr", "pjit": "jaxpr", "closed_call": "call_jaxpr",
         "core_call": "call_jaxpr", "remat": "jaxpr", "remat2": "jaxpr", "checkpoint": "jaxpr",
         "custom_jvp_call": "call_jaxpr", "custom_vjp_call": "call_jaxpr",
         "custom_vjp_call_jaxpr": "fun_jaxpr"}


def _stack(cx: Context, eqn: Any) -> str:
    return "/".join(s for s in (cx.stack, str(eqn.source_info.name_stack)) if s)


def call(cx: Context, eqn: Any, vals: list[Val]) -> list[Val]:
    """The walk into a nested jaxpr; thinjax.ops.depthwise's shifted sum and
    thinjax.ops.dense_conv's convolution (jits of their names; the latter may hold oneDNN's
    custom VJP) are read as the convolutions they compute."""
    name = eqn.params.get("name")
    if name in (DEPTHWISE, CONV2D) and len(vals) == 2:
        groups = int(eqn.invars[0].aval.shape[-1]) if name == DEPTHWISE else 1
        return linear.convolution(cx, eqn, vals, linear.NHWC_HWIO, groups, 1)
    sub = eqn.params.get(CALLS[eqn.primitive.name])
    if sub is None:
        return cx.refuse(eqn, vals, "a call without its jaxpr")
    return walk_closed(cx, sub, vals, _stack(cx, eqn))


def optimization_barrier(cx: Context, eqn: Any, vals: list[Val]) -> list[Val]:
    return list(vals)


def _merge_carry(cx: Context, why: str, carry: list[Val], outs: list[Val]) -> list[Val]:
    """The carry's ids after one pass of the body: each axis united with the body's
    result (where the initial carry was broadcast, the body's ids)."""
    merged = []
    for c_in, c_out in zip(carry, outs):
        for a, b in zip(c_in.ids, c_out.ids):
            cx.ch.unite(a, b, why)
        merged.append(Val(tuple(a if a is not None else b
                                for a, b in zip(c_in.ids, c_out.ids))))
    return merged


def scan(cx: Context, eqn: Any, vals: list[Val]) -> list[Val]:
    """A scan over identical blocks: weights stacked along the scanned axis are shared
    channel-wise by every iteration (pruning channel c prunes it in every block)."""
    p = eqn.params
    nc, nk, length = p["num_consts"], p["num_carry"], int(p["length"])
    consts, carry, xs = vals[:nc], vals[nc:nc + nk], vals[nc + nk:]
    why = cx.where(eqn)
    sliced = []
    for v in xs:
        if v.ids and v.ids[0] is not None and np.any(v.ids[0]):
            cx.ch.fix(v.ids[0], f"{why}: scans over a channel axis")
        sliced.append(Val(v.ids[1:], v.param))
    outer, start = cx.scale, len(cx.terms)
    cx.scale *= length
    try:
        outs = walk_closed(cx, p["jaxpr"], consts + carry + sliced, _stack(cx, eqn))
        merged = _merge_carry(cx, why, carry, outs[:nk])
        if any(a is None and b is not None for c, m in zip(carry, merged)
               for a, b in zip(c.ids, m.ids)):
            del cx.terms[start:]     # a second pass with the body's carry ids
            outs = walk_closed(cx, p["jaxpr"], consts + merged + sliced, _stack(cx, eqn))
            merged = _merge_carry(cx, why, merged, outs[:nk])
    finally:
        cx.scale = outer
    ys = [Val((np.zeros(length, np.int64),) + y.ids) for y in outs[nk:]]
    return merged + ys


def table() -> dict[str, Rule]:
    """Primitive name -> rule, for every primitive the trace follows."""
    out: dict[str, Rule] = dict(rules.RULES)
    out.update(linear.RULES)
    out.update({name: call for name in CALLS})
    out.update({"scan": scan, "optimization_barrier": optimization_barrier})
    return out
