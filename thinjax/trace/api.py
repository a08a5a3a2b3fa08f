"""`prune`: any linen module, pruned one-shot from a trace of its forward pass.

    from thinjax.trace import prune
    small_model, small_vars, report = prune(model, variables, x, criterion="l1",
                                            target=0.5, target_kind="macs_fraction")
    print(report)
    y = small_model.apply(small_vars, x)

Scores come from `thinjax.prune.criteria` (the data-free ones: this one-shot prune has no
training data; `thinjax.trace.scores.compute_masks` takes batches for taylor and hrank),
the allocation from `thinjax.prune.allocate`, exactly as for a plan; `materialize`
slices the variables and rebuilds the module (`thinjax.trace.rebuild`); `prune` then
checks on the example input that the smaller network computes what the masked one does.
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Any

import flax.linen as nn
import jax
import numpy as np

from thinjax.cost import Cost
from thinjax.errors import TargetError, TraceError
from thinjax.prune import spec as prune_spec
from thinjax.prune.allocate import Allocation
from thinjax.trace import rebuild
from thinjax.trace.graph import Refusal
from thinjax.trace.network import Trace, TracedNet, trace
from thinjax.trace.scores import TracedScoreInputs, compute_masks  # noqa: F401 (re-exported)

ONE_SHOT = ("score_members", "fpgm_p", "reduce", "normalization", "group_ratios")


def materialize(tr: Trace, masks: dict[str, np.ndarray], variables: Any
                ) -> tuple[rebuild.Pruned, Any]:
    """(the module rebuilt at the masks' widths, `variables` sliced to them)."""
    keep = rebuild.keep_axes(tr.leaves, tr.groups, masks)
    return (rebuild.Pruned(tr.module, rebuild.new_shapes(tr.leaves, keep)),
            rebuild.slice_variables(tr.leaves, keep, variables))


def mask_variables(tr: Trace, masks: dict[str, np.ndarray], variables: Any) -> Any:
    """`variables` with every member of every pruned channel zeroed: the masked network,
    which the materialised one equals where the pruned groups are exact."""
    return rebuild.mask_variables(tr.leaves, rebuild.keep_axes(tr.leaves, tr.groups, masks),
                                  variables)


@dataclasses.dataclass
class Report:
    """What `prune` did: the groups cut (kept/size), those it left whole and why, the
    operations it could not follow, costs before and after, and the check."""
    kept: dict[str, tuple[int, int]]     # group -> (channels kept, size)
    inexact: dict[str, tuple[str, ...]]  # groups left whole as not exact (inexact=False)
    refused: tuple[Refusal, ...]
    unsupported: dict[str, tuple[str, ...]]
    dense: Cost
    pruned: Cost
    max_abs_diff: float | None           # materialised vs masked on the example input
    allocation: Allocation

    def __str__(self) -> str:
        cut = sum(1 for k, s in self.kept.values() if k < s)
        lines = [f"pruned {cut} of {len(self.kept)} channel groups: params "
                 f"{self.dense.params:,} -> {self.pruned.params:,}, MACs "
                 f"{self.dense.macs:,} -> {self.pruned.macs:,}"]
        lines += [f"  {n}: {k}/{s}" for n, (k, s) in self.kept.items() if k < s]
        lines += [f"left whole (statistics over channels: inexact=True prunes it): {n}: "
                  f"{why[0]}" for n, why in self.inexact.items()]
        lines += [f"left whole: {r.name} ({r.size}): {r.reasons[0]}" for r in self.refused]
        lines += [f"not followed: {p} ({len(w)}x), e.g. {w[0]}"
                  for p, w in self.unsupported.items()]
        if self.max_abs_diff is not None:
            lines.append(f"check: max |pruned - masked| on the example input = "
                         f"{self.max_abs_diff:.3g}")
        return "\n".join(lines)


def _max_diff(a: Any, b: Any) -> tuple[float, float]:
    """(max |a - b|, max |a|) over the leaves of two output trees."""
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    diff = max(float(np.max(np.abs(np.asarray(x) - np.asarray(y)))) for x, y in zip(la, lb))
    return diff, max(float(np.max(np.abs(np.asarray(x)))) for x in la)


def _check(tr: Trace, net: TracedNet, model: nn.Module, small: Any, masks: dict,
           variables: Any, inputs: tuple, kwargs: dict) -> float:
    """Max |materialised - masked| on the example input; refuses a mismatch where every
    cut group is exact (the model's code depends on a width the trace cannot see)."""
    def run(m: nn.Module, v: Any) -> Any:    # compiled: faster than op by op
        return jax.jit(lambda v, *xs: m.apply(v, *xs, **kwargs))(v, *inputs)

    y_mask = run(tr.module, mask_variables(tr, masks, variables))
    try:
        y_small = run(model, small)
    except Exception as e:  # noqa: BLE001 (the user's code, at widths it did not expect)
        raise TraceError(f"the pruned network fails on the example input ({type(e).__name__}: "
                         f"{e}): the model's code uses a width the trace cannot see (a "
                         "hard-coded size)") from e
    diff, scale = _max_diff(y_small, y_mask)
    cut = [n for n, m in masks.items() if not np.all(np.asarray(m) > 0)]
    if diff > 1e-4 * max(scale, 1.0) and all(net.groups[n].exact for n in cut):
        raise TraceError(f"the pruned network's output differs from the masked network's by "
                         f"up to {diff:.3g} (outputs up to {scale:.3g}): the model's code "
                         "uses a width the trace cannot see (a hard-coded size or scale such "
                         "as attention's 1/sqrt(head_dim)); pruned groups: " + ", ".join(cut))
    return diff


def prune(module: nn.Module, variables: Any, example_input: Any, *, criterion: str = "l1",
          target: float = 0.5, target_kind: str = "macs_fraction", allocation: str = "global",
          round_to: int = 1, inexact: bool = False, apply_kwargs: dict | None = None,
          check: bool = True, seed: int = 0, **options: Any
          ) -> tuple[rebuild.Pruned, Any, Report]:
    """One-shot structured pruning of any linen `module` whose forward pass the trace
    follows: (the smaller module, its variables, a `Report`).

    `example_input`: one input (or a tuple of inputs) of ``module.apply``; the MACs are
    counted on it, so give one example (a batch of one). `apply_kwargs`: the other
    arguments of apply, in inference mode (``{"train": False}``). `criterion`, `target`,
    `target_kind`, `allocation`, `round_to` and `options` (score_members, fpgm_p,
    reduce, normalization, group_ratios) mean what they mean for `thinjax.prune_model`.
    Groups whose channels feed a statistic over channels (LayerNorm) are not exact (the
    pruned network computes otherwise than the masked one): they stay whole unless
    `inexact`. `check`: compare both networks' outputs on the example input."""
    # NNX: thinjax.trace.nnx_trace (flax.nnx is not imported here: it imports optax, and
    # a module that is an nnx.Module means flax.nnx was imported already)
    nnx = sys.modules.get("flax.nnx")
    if nnx is not None and isinstance(module, nnx.Module):
        raise TraceError("module: an NNX module; prune it with thinjax.trace.prune_nnx(model, "
                         "x, ...), which returns (the smaller model, the report)")
    spec = one_shot_spec("prune", dict(criterion=criterion, target_kind=target_kind,
                                       target=target, allocation=allocation,
                                       round_to=round_to), options)
    inputs = example_input if isinstance(example_input, tuple) else (example_input,)
    kwargs = dict(apply_kwargs or {})
    tr = trace(module, variables, *inputs, **kwargs)
    net = prunable_net(tr, inexact)
    alloc = compute_masks(net, variables, spec, spec.goal(), seed)
    if all(np.all(np.asarray(m) > 0) for m in alloc.masks.values()):
        raise TargetError(f"target_kind={target_kind}, target={target:g}: removes no "
                          "channel; give a lower target or a smaller round_to")
    model, small = materialize(tr, alloc.masks, variables)
    diff = _check(tr, net, model, small, alloc.masks, variables, inputs, kwargs) \
        if check else None
    kept = {n: (int(np.sum(np.asarray(m) > 0)), net.groups[n].size)
            for n, m in alloc.masks.items()}
    report = Report(kept, {n: g.notes for n, g in tr.groups.items() if n not in net.groups},
                    tr.refused, tr.unsupported, net.cost(), alloc.plan.cost(), diff, alloc)
    return model, small, report


def one_shot_spec(function: str, settings: dict, options: dict):
    """The `thinjax.prune.spec.PruneSpec` of a one-shot call of `function` (prune,
    prune_nnx): its settings and options; an unknown option is one error naming them."""
    bad = sorted(set(options) - set(ONE_SHOT))
    if bad:
        raise TraceError(f"{bad[0]}={options[bad[0]]!r}: not an option of {function}; valid: "
                         f"{', '.join(ONE_SHOT)}")
    return prune_spec.from_config({**settings, **options}, where="")


def prunable_net(tr, inexact: bool):
    """`tr.net(inexact)`, refused with the trace's reasons when it has no group to prune."""
    net = tr.net(inexact)
    if not net.groups:
        raise TraceError("nothing to prune: the trace found no prunable channel group\n"
                         + "\n".join(f"  {r.name}: {r.reasons[0]}" for r in tr.refused))
    return net
