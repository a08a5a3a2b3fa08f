"""The walk over a jaxpr: every equation's rule maps its operands' channel ids to its
results' (`thinjax.trace.rules`), recording on a `Context` the couplings, the layers that
produce and consume channels, the multiply-accumulates, and what it could not follow.

Liveness first: an equation whose results reach the output only through a multiplication
by the literal 0 (``x * 0 + 1``: thinjax's `fusion_barrier` divides by such a run-time
one) does not influence the result, so its channels are not constrained by it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np
from jax.extend import core

from thinjax.trace.channels import Axis, Channels, Ids, fixed_axes


@dataclasses.dataclass(frozen=True)
class Val:
    """What the walk knows of a value: its channel ids, and whether it is a variable leaf
    (possibly transposed, reshaped or cast), i.e. a layer's weights."""
    ids: Ids
    param: bool = False


@dataclasses.dataclass
class Context:
    """What one trace records (a `Channels` union-find and the per-layer facts)."""
    ch: Channels = dataclasses.field(default_factory=Channels)
    producers: list[tuple[int, int]] = dataclasses.field(default_factory=list)
    tied: set[tuple[int, int]] = dataclasses.field(default_factory=set)
    consumers: list[tuple[int, int]] = dataclasses.field(default_factory=list)
    # MACs: (multiplier, factors), each factor an axis's ids and its size
    terms: list[tuple[int, list[tuple[Axis, int]]]] = dataclasses.field(default_factory=list)
    unsupported: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    rules: dict[str, Any] = dataclasses.field(default_factory=dict)  # name -> Rule
    scale: int = 1          # multiplier of the MACs recorded now (scan lengths)
    stack: str = ""         # the name stack of the enclosing call

    def owner(self, ids: Axis) -> tuple[int, int] | None:
        """(leaf, axis) that owns every id of `ids`, if one does."""
        if ids is None or not np.all(ids > 0):
            return None
        owners = {self.ch.owner[int(e)][:2] for e in ids}
        return owners.pop() if len(owners) == 1 else None

    def record(self, kind: str, val: Val, axis: int) -> None:
        """Notes axis `axis` of a weight operand as a producer, tied or consumer axis."""
        if not val.param:
            return
        key = self.owner(val.ids[axis])
        if key is None:
            return
        seq = self.consumers if kind == "consumer" else self.producers
        if key not in seq:
            seq.append(key)
        if kind == "tied":
            self.tied.add(key)

    def macs(self, factors: list[tuple[Axis, int]]) -> None:
        self.terms.append((self.scale, factors))

    def where(self, eqn: Any) -> str:
        stack = "/".join(s for s in (self.stack, str(eqn.source_info.name_stack)) if s)
        return f"{eqn.primitive.name} in {stack or 'the top level'}"

    def refuse(self, eqn: Any, vals: list[Val], what: str | None = None) -> list[Val]:
        """An equation not followed: every channel reaching it is fixed, its results hold
        no channel, and it is named in the report."""
        why = f"{self.where(eqn)}: {what or 'not followed by the trace'}"
        self.unsupported.setdefault(eqn.primitive.name, []).append(why)
        for v in vals:
            for a in v.ids:
                self.ch.fix(a, why)
        return [Val(fixed_axes(o.aval.shape)) for o in eqn.outvars]


Rule = Callable[[Context, Any, list[Val]], list[Val]]


def _is_zero(x: Any) -> bool:
    return isinstance(x, core.Literal) and bool(np.all(np.asarray(x.val) == 0))


def zero_mul(eqn: Any) -> bool:
    """A multiplication by the literal 0: its result does not depend on the other operand."""
    return eqn.primitive.name == "mul" and any(_is_zero(x) for x in eqn.invars)


def live(jaxpr: Any) -> set[int]:
    """Indices of the equations whose results influence the outputs."""
    needed = {v for v in jaxpr.outvars if isinstance(v, core.Var)}
    out: set[int] = set()
    for k in range(len(jaxpr.eqns) - 1, -1, -1):
        e = jaxpr.eqns[k]
        if not any(o in needed for o in e.outvars if not isinstance(o, core.DropVar)):
            continue
        out.add(k)
        if not zero_mul(e):
            needed.update(v for v in e.invars if isinstance(v, core.Var))
    return out


def _read(env: dict, x: Any) -> Val:
    if isinstance(x, core.Literal):
        return Val(tuple(None for _ in np.shape(x.val)))
    return env[x]


def walk(cx: Context, jaxpr: Any, consts: list[Val], ins: list[Val]) -> list[Val]:
    """Channel ids of `jaxpr`'s outputs given its constants' and inputs' (``cx.rules``:
    primitive name -> rule; a primitive without one is refused)."""
    env: dict = dict(zip(jaxpr.constvars, consts))
    env.update(zip(jaxpr.invars, ins))
    alive = live(jaxpr)
    for k, eqn in enumerate(jaxpr.eqns):
        if k not in alive:
            continue
        if zero_mul(eqn):   # a constant 0 (its operand was not even walked)
            outs = [Val(tuple(None for _ in o.aval.shape)) for o in eqn.outvars]
        else:
            vals = [_read(env, x) for x in eqn.invars]
            rule = cx.rules.get(eqn.primitive.name)
            outs = rule(cx, eqn, vals) if rule else cx.refuse(eqn, vals)
        for v, o in zip(eqn.outvars, outs):
            if not isinstance(v, core.DropVar):
                env[v] = o
    return [_read(env, x) for x in jaxpr.outvars]


def walk_closed(cx: Context, closed: Any, ins: list[Val], stack: str = "") -> list[Val]:
    """`walk` of a ClosedJaxpr (its constants hold no channel) or an open Jaxpr, with the
    name stack of the call that holds it."""
    jaxpr = getattr(closed, "jaxpr", closed)
    consts = [Val(fixed_axes(np.shape(c))) for c in getattr(closed, "consts", ())]
    outer, cx.stack = cx.stack, stack or cx.stack
    try:
        return walk(cx, jaxpr, consts, ins)
    finally:
        cx.stack = outer
