"""`trace_nnx` and `prune_nnx`: an NNX module's channel groups traced from its forward
pass, pruned one-shot into a genuinely smaller NNX module.

    from thinjax.trace import prune_nnx
    small, report = prune_nnx(model, x, criterion="l1", target=0.5,
                              target_kind="macs_fraction")
    y = small(x)

The forward pass traced is the pure function ``lambda variables, *xs:
nnx.merge(graphdef, variables)(*xs)`` of an inference-mode copy of the model (``.eval()``:
BatchNorm's running statistics, no dropout), its `nnx.Param` and `nnx.BatchStat` arrays
given as a linen-style tree ``{"params": ..., "batch_stats": ...}`` (`nnx_rebuild.split`),
so the jaxpr walk, the groups, the cost model, the criteria and the allocator are exactly
those of `thinjax.trace` on linen, and a model written in NNX has the groups of the same
model written in linen. The other state (RNG streams, arrays held as plain attributes) are
constants of the trace: channels meeting them stay whole.

A separate entry rather than `prune` taking NNX modules too: an NNX module holds its state,
so there is no `variables` to give or to return, and one function whose second argument is
the variables for linen and the input for NNX would be a trap.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from flax import nnx

from thinjax.errors import TargetError, TraceError
from thinjax.trace import nnx_rebuild, rebuild
from thinjax.trace.api import (
    Report,
    compute_masks,
    mask_variables,
    one_shot_spec,
    prunable_net,
)
from thinjax.trace.network import Trace, TracedNet, from_jaxpr, leaves_of


def inference_copy(model: nnx.Module) -> nnx.Module:
    """A copy of `model` in inference mode (the user's module and its mode untouched)."""
    view = nnx.clone(model)
    view.eval()
    return view


def _jaxpr(model: nnx.Module, inputs: tuple, kwargs: dict) -> tuple[Any, dict]:
    """The forward pass's ClosedJaxpr over the variables tree and the inputs, and that
    tree."""
    graphdef, variables, states = nnx_rebuild.split(model)

    def forward(v: dict, *xs: Any) -> Any:
        return nnx_rebuild.merge(graphdef, states, v)(*xs, **kwargs)

    try:
        closed = jax.make_jaxpr(forward)(variables, *inputs)
    except Exception as e:  # noqa: BLE001 (any failure of the user's forward pass)
        raise TraceError(f"tracing {type(model).__name__}(*example inputs) failed: "
                         f"{type(e).__name__}: {e}") from e
    return closed, variables


def trace_nnx(model: nnx.Module, *inputs: Any, **call_kwargs: Any) -> Trace:
    """Traces ``model(*inputs, **call_kwargs)`` on an inference-mode copy of `model` and
    finds its channel groups (``Trace.module``: that copy; the variables are
    `variables_of(model)`)."""
    if not isinstance(model, nnx.Module):
        raise TraceError(f"model: got {type(model).__name__}; give a flax.nnx Module (a "
                         "linen module: thinjax.trace.trace)")
    view = inference_copy(model)
    closed, variables = _jaxpr(view, inputs, call_kwargs)
    classes = nnx_rebuild.module_classes(view)
    return from_jaxpr(view, closed, leaves_of(variables), inputs,
                      lambda groups: nnx_rebuild.check_layers(groups, classes))


def variables_of(model: nnx.Module) -> dict[str, Any]:
    """`model`'s arrays as the trace names them: ``{"params": {...}, "batch_stats":
    {...}}`` (paths as in the groups' members)."""
    return nnx_rebuild.split(model)[1]


def materialize_nnx(tr: Trace, masks: dict[str, np.ndarray], model: nnx.Module
                    ) -> nnx.Module:
    """A new, smaller `model` (its arrays sliced to the masks, its layers' widths set);
    `model` itself is not changed."""
    keep = rebuild.keep_axes(tr.leaves, tr.groups, masks)
    return nnx_rebuild.materialize(model, tr.leaves, keep, variables_of(model))


def mask_nnx(tr: Trace, masks: dict[str, np.ndarray], model: nnx.Module) -> nnx.Module:
    """A copy of `model` with every member of every pruned channel zeroed (the masked
    network, which the materialised one equals where the pruned groups are exact)."""
    return nnx_rebuild.with_variables(model, mask_variables(tr, masks, variables_of(model)))


def _outputs(model: nnx.Module, inputs: tuple, kwargs: dict) -> Any:
    """`model`'s outputs on `inputs`, compiled (faster than op by op)."""
    graphdef, variables, states = nnx_rebuild.split(model)
    return jax.jit(lambda v, *xs: nnx_rebuild.merge(graphdef, states, v)(*xs, **kwargs))(
        variables, *inputs)


def _check(tr: Trace, net: TracedNet, small: nnx.Module, masks: dict, inputs: tuple,
           kwargs: dict) -> float:
    """Max |materialised - masked| on the example input (both in inference mode);
    refuses a mismatch where every cut group is exact, as `thinjax.trace.prune` does."""
    y_mask = _outputs(mask_nnx(tr, masks, tr.module), inputs, kwargs)
    try:
        y_small = _outputs(inference_copy(small), inputs, kwargs)
    except Exception as e:  # noqa: BLE001 (the user's code, at widths it did not expect)
        raise TraceError(f"the pruned network fails on the example input ({type(e).__name__}: "
                         f"{e}): the model's code uses a width the trace cannot see (a "
                         "hard-coded size, or a width attribute of a module of your own)") from e
    la, lb = jax.tree_util.tree_leaves(y_small), jax.tree_util.tree_leaves(y_mask)
    diff = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b)))) for a, b in zip(la, lb))
    scale = max(float(np.max(np.abs(np.asarray(b)))) for b in lb)
    cut = [n for n, m in masks.items() if not np.all(np.asarray(m) > 0)]
    if diff > 1e-4 * max(scale, 1.0) and all(net.groups[n].exact for n in cut):
        raise TraceError(f"the pruned network's output differs from the masked network's by "
                         f"up to {diff:.3g} (outputs up to {scale:.3g}): the model's code "
                         "uses a width the trace cannot see (a hard-coded size, or a width "
                         "attribute of a module of your own); pruned groups: " + ", ".join(cut))
    return diff


def prune_nnx(model: nnx.Module, example_input: Any, *, criterion: str = "l1",
              target: float = 0.5, target_kind: str = "macs_fraction",
              allocation: str = "global", round_to: int = 1, inexact: bool = False,
              call_kwargs: dict | None = None, check: bool = True, seed: int = 0,
              **options: Any) -> tuple[nnx.Module, Report]:
    """One-shot structured pruning of an NNX `model`: (a new, smaller NNX module in
    `model`'s mode, a `Report`); `model` is not changed.

    `example_input`: one input (or a tuple of inputs) of ``model(...)``, a batch of one
    (the MACs are counted on it); `call_kwargs`: the call's other arguments. The rest
    means what it means for `thinjax.trace.prune`."""
    spec = one_shot_spec("prune_nnx", dict(criterion=criterion, target_kind=target_kind,
                                           target=target, allocation=allocation,
                                           round_to=round_to), options)
    inputs = example_input if isinstance(example_input, tuple) else (example_input,)
    kwargs = dict(call_kwargs or {})
    tr = trace_nnx(model, *inputs, **kwargs)
    net = prunable_net(tr, inexact)
    variables = variables_of(model)
    alloc = compute_masks(net, variables, spec, spec.goal(), seed)
    if all(np.all(np.asarray(m) > 0) for m in alloc.masks.values()):
        raise TargetError(f"target_kind={target_kind}, target={target:g}: removes no "
                          "channel; give a lower target or a smaller round_to")
    small = materialize_nnx(tr, alloc.masks, model)
    diff = _check(tr, net, small, alloc.masks, inputs, kwargs) if check else None
    kept = {n: (int(np.sum(np.asarray(m) > 0)), net.groups[n].size)
            for n, m in alloc.masks.items()}
    report = Report(kept, {n: g.notes for n, g in tr.groups.items() if n not in net.groups},
                    tr.refused, tr.unsupported, net.cost(), alloc.plan.cost(), diff, alloc)
    return small, report

