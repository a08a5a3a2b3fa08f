"""`trace`: a linen module, its variables and an example input -> its channel groups, the
groups it refused (and why), and a cost model; `TracedNet`: the network the allocator
prunes (`thinjax.prune.allocate` reads it as it reads a `Plan`).

The forward pass is traced with ``jax.make_jaxpr`` of ``module.apply(variables, *inputs)``
with the variables as inputs, so every variable leaf (params and BatchNorm statistics) is
an input of the jaxpr whose every axis gets channel ids (`thinjax.trace.channels`). The
example inputs' axes and the outputs' hold no channels (they cannot change).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import numpy as np

from thinjax.cost import Cost
from thinjax.errors import TraceError
from thinjax.trace import calls, cost, graph, rebuild
from thinjax.trace.channels import fixed_axes
from thinjax.trace.graph import Leaf, Refusal, TracedGroup
from thinjax.trace.walk import Context, Val, walk_closed

OUTPUT = "reaches the network's output (its width is fixed)"


@dataclasses.dataclass(frozen=True, eq=False)
class Trace:
    """What tracing a module found."""
    module: nn.Module
    leaves: tuple[Leaf, ...]
    groups: dict[str, TracedGroup]          # every group it can prune (exact or not)
    refused: tuple[Refusal, ...]            # the would-be groups that stay whole
    unsupported: dict[str, tuple[str, ...]]  # primitive -> where it was met
    cost: cost.CostModel

    def net(self, inexact: bool = False) -> TracedNet:
        """The network to allocate on: the exact groups (with `inexact`, all of them)."""
        return TracedNet(self, {n: g for n, g in self.groups.items() if inexact or g.exact})


@dataclasses.dataclass(frozen=True, eq=False)
class TracedNet:
    """A traced network keeping `counts` channels per group (missing: all): what the
    allocator's search walks through, as it walks through plans."""
    trace: Trace
    groups: dict[str, TracedGroup]
    counts: Mapping[str, int] = dataclasses.field(default_factory=dict)

    def with_counts(self, counts: Mapping[str, int]) -> TracedNet:
        return dataclasses.replace(self, counts=dict(counts))

    def cost(self, input_size: int | None = None) -> Cost:
        params, macs = self.trace.cost.at(self.counts)
        return Cost(params, macs, 0)

    def describe(self) -> str:
        return ", ".join(f"{n} {self.counts.get(n, g.size)}/{g.size}"
                         for n, g in self.groups.items())


def _key(k: Any) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(k, attr):
            return str(getattr(k, attr))
    return str(k)


def leaves_of(variables: Any) -> tuple[Leaf, ...]:
    """Every leaf of a variables tree: collection, path in it, shape."""
    out = []
    for path, x in jax.tree_util.tree_flatten_with_path(variables)[0]:
        keys = [_key(k) for k in path]
        out.append(Leaf(keys[0], "/".join(keys[1:]), tuple(np.shape(x))))
    return tuple(out)


def _jaxpr(module: nn.Module, variables: Any, inputs: tuple, kwargs: dict
           ) -> tuple[Any, dict[str, type]]:
    """The forward pass's ClosedJaxpr, and module path -> class of every module called."""
    seen: dict[str, type] = {}

    def record(next_fun, args, kw, ctx):
        seen.setdefault("/".join(ctx.module.path), type(ctx.module))
        return next_fun(*args, **kw)

    def forward(v, *xs):
        with nn.intercept_methods(record):
            return module.apply(v, *xs, **kwargs)

    try:
        closed = jax.make_jaxpr(forward)(variables, *inputs)
    except Exception as e:  # noqa: BLE001 (any failure of the user's forward pass)
        raise TraceError(f"tracing {type(module).__name__}.apply(variables, *example "
                         f"inputs) failed: {type(e).__name__}: {e}") from e
    return closed, seen


def trace(module: nn.Module, variables: Any, *inputs: Any, **apply_kwargs: Any) -> Trace:
    """Traces ``module.apply(variables, *inputs, **apply_kwargs)`` (inference mode:
    batch statistics as inputs, nothing mutable) and finds its channel groups."""
    if not isinstance(module, nn.Module):
        raise TraceError(f"module: got {type(module).__name__}; give a flax.linen Module "
                         "(an NNX module: thinjax.trace.trace_nnx / prune_nnx)")
    closed, modules = _jaxpr(module, variables, inputs, apply_kwargs)
    return from_jaxpr(module, closed, leaves_of(variables), inputs,
                      lambda groups: rebuild.check_layers(groups, modules))


def from_jaxpr(module: Any, closed, leaves: list[Leaf], inputs: Any,
               check_layers: Callable[[list[TracedGroup]], dict[str, str]]) -> Trace:
    """The `Trace` of a traced forward pass `closed` (jaxpr over the `leaves`, then the
    `inputs`): channel ids per leaf axis, walked through the jaxpr, grouped, the groups
    `check_layers` refuses (name -> why) and those the cost model cannot count refused;
    shared by the linen and the NNX tracers."""
    cx = Context(rules=calls.table())
    ids = [[cx.ch.new(k, a, n) for a, n in enumerate(leaf.shape)]
           for k, leaf in enumerate(leaves)]
    ins = [Val(tuple(a), True) for a in ids]
    ins += [Val(fixed_axes(np.shape(x))) for x in jax.tree_util.tree_leaves(inputs)]
    for out in walk_closed(cx, closed, ins):
        for a in out.ids:
            cx.ch.fix(a, OUTPUT)
    groups, refused = graph.build(cx, list(leaves), ids)
    bad = check_layers(groups)
    model, bad_cost = cost.model(cx.ch, list(leaves), ids, cx.terms,
                                 [g for g in groups if g.name not in bad])
    bad.update(bad_cost)
    if bad_cost:
        model, _ = cost.model(cx.ch, list(leaves), ids, cx.terms,
                              [g for g in groups if g.name not in bad])
    refused += [Refusal(g.name, g.size, (bad[g.name],)) for g in groups if g.name in bad]
    unsupported = {p: tuple(dict.fromkeys(w)) for p, w in cx.unsupported.items()}
    return Trace(module, leaves, {g.name: g for g in groups if g.name not in bad},
                 tuple(refused), unsupported, model)
