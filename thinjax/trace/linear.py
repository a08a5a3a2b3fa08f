"""The rules of the layers that create channels: convolutions and dot products.

A weight operand's output axis (a conv kernel's ``O``, a dense kernel's free axis) is a
*producer* of the channels it creates; its input axis, contracted with the activation's
channels, a *consumer*. Depthwise convolutions (one input channel per group, one output
per input) tie input and output channels: the kernel's output axis joins the input's
group. Every convolution and dot product records its multiply-accumulates as a product of
axis sizes, so that the cost of any channel counts follows from the trace.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from thinjax.trace.channels import Axis, carries
from thinjax.trace.walk import Context, Val

ONEDNN_CONV = "thinjax_onednn_conv_fwd"   # thinjax.ops.conv's NHWC x HWIO convolution
IDENTITY = "thinjax_identity"             # thinjax.ops.conv.lane_boundary's identity
NHWC_HWIO = ((0, 3, 1, 2), (3, 2, 0, 1), (0, 3, 1, 2))


def _shape(x: Any) -> tuple[int, ...]:
    return tuple(x.aval.shape)


def _feature(cx: Context, eqn: Any, lhs: Val, rhs: Val, specs: tuple, groups: int,
             shapes: tuple) -> Axis:
    """Unites (or ties, or fixes) the channels of a convolution; its output channel ids."""
    (lhs_spec, rhs_spec, _), (lhs_shape, rhs_shape) = specs, shapes
    why = cx.where(eqn)
    lf, ri, ro = lhs.ids[lhs_spec[1]], rhs.ids[rhs_spec[1]], rhs.ids[rhs_spec[0]]
    cin, cout = lhs_shape[lhs_spec[1]], rhs_shape[rhs_spec[0]]
    if groups == 1:
        cx.ch.unite(lf, ri, why)
        cx.record("consumer", rhs, rhs_spec[1])
        cx.record("producer", rhs, rhs_spec[0])
        return ro
    if cin == groups == cout:   # depthwise: input channel c makes output channel c
        cx.ch.unite(lf, ro, why)
        cx.record("tied", rhs, rhs_spec[0])
        return ro
    for a in (lf, ri, ro):
        cx.ch.fix(a, f"{why}: a grouped convolution ({groups} groups of {cin // groups} "
                     f"channels into {cout}) is not followed")
    return np.zeros(cout, np.int64)


def convolution(cx: Context, eqn: Any, vals: list[Val], specs: tuple, groups: int,
                batch_groups: int) -> list[Val]:
    """Any N-d convolution, given its (lhs, rhs, out) dimension specs."""
    lhs_spec, rhs_spec, out_spec = specs
    lhs, rhs = vals[:2]
    out_shape = _shape(eqn.outvars[0])
    if batch_groups != 1:
        return cx.refuse(eqn, vals, "a convolution with batch_group_count > 1")
    out: list[Axis] = [None] * len(out_shape)
    for k in range(2, len(lhs_spec)):
        a = lhs.ids[lhs_spec[k]]
        if carries(a):
            cx.ch.fix(a, f"{cx.where(eqn)}: a convolution window over a channel axis")
        out[out_spec[k]] = np.zeros(out_shape[out_spec[k]], np.int64)
    out[out_spec[0]] = lhs.ids[lhs_spec[0]]
    rhs_shape = _shape(eqn.invars[1])
    out[out_spec[1]] = _feature(cx, eqn, lhs, rhs, specs, groups,
                                (_shape(eqn.invars[0]), rhs_shape))
    factors = [(a, n) for a, n in zip(out, out_shape)]
    factors.append((rhs.ids[rhs_spec[1]], rhs_shape[rhs_spec[1]]))
    factors += [(None, rhs_shape[d]) for d in rhs_spec[2:]]
    cx.macs(factors)
    return [Val(tuple(out))]


def conv_general_dilated(cx: Context, eqn: Any, vals: list[Val]) -> list[Val]:
    p = eqn.params
    dn = p["dimension_numbers"]
    return convolution(cx, eqn, vals, (dn.lhs_spec, dn.rhs_spec, dn.out_spec),
                       p["feature_group_count"], p["batch_group_count"])


def ffi_call(cx: Context, eqn: Any, vals: list[Val]) -> list[Val]:
    """thinjax's own oneDNN convolution is a convolution, its identity (a fusion boundary)
    the identity; other foreign calls are opaque."""
    target = eqn.params.get("target_name", "?")
    if target == ONEDNN_CONV:
        return convolution(cx, eqn, vals, NHWC_HWIO, 1, 1)
    if target == IDENTITY:
        return list(vals)
    return cx.refuse(eqn, vals, f"the foreign function call {target!r} is opaque")


def dot_general(cx: Context, eqn: Any, vals: list[Val]) -> list[Val]:
    (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
    lhs, rhs = vals
    why = cx.where(eqn)
    factors = []
    for a, b in zip(lc, rc):
        la, ra = lhs.ids[a], rhs.ids[b]
        cx.ch.unite(la, ra, why)
        if not (lhs.param or rhs.param):
            cx.ch.mark_inexact(la if la is not None else ra,
                               f"{why}: contracts two activations over channels (attention's "
                               "q.k; model code usually scales it by the channel count)")
        cx.record("consumer", lhs, a)
        cx.record("consumer", rhs, b)
        factors.append((la, _shape(eqn.invars[0])[a]))
    out: list[Axis] = []
    for a, b in zip(lb, rb):
        cx.ch.unite(lhs.ids[a], rhs.ids[b], why)
        out.append(lhs.ids[a] if lhs.ids[a] is not None else rhs.ids[b])
    for val, skip in ((lhs, set(lc) | set(lb)), (rhs, set(rc) | set(rb))):
        for d, a in enumerate(val.ids):
            if d not in skip:
                out.append(a)
                cx.record("producer", val, d)
    cx.macs([(a, n) for a, n in zip(out, _shape(eqn.outvars[0]))] + factors)
    return [Val(tuple(out))]


RULES = {"conv_general_dilated": conv_general_dilated, "dot_general": dot_general,
         "ffi_call": ffi_call}
