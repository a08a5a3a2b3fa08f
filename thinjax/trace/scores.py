"""Scores and masks for traced groups: every criterion of `thinjax.prune.criteria`, the
data-dependent ones (taylor, hrank) included, then `thinjax.prune.allocate`.

The data-free criteria read the members' slices (`TracedScoreInputs`). The data-dependent
ones need the module's forward pass on training batches:

  ``taylor``  |d loss / d gate| per channel (Molchanov et al. 2019), summed over each
              group's gates (`thinjax.trace.masking.gate_slices`: the norm after each
              producing layer, else the layer itself; scaling a norm's scale and shift by m
              scales its output by m), accumulated over ``taylor_batches`` batches in
              training mode. On a thinjax ResNet the gates are exactly where
              ``ResNet(masks=...)`` multiplies (every producer's BatchNorm output), so the
              scores are the plan's;
  ``hrank``   the mean matrix rank of each channel's HxW map at the gates' outputs, after a
              ReLU (HRank's feature maps), inference mode; networks whose gates do not
              output NHWC maps are refused.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from thinjax.errors import TraceError
from thinjax.prune import spec as prune_spec
from thinjax.prune.allocate import Allocation, Target, allocate
from thinjax.prune.criteria import REDUCE, ScoreInputs, needs_data, score_groups
from thinjax.prune.groups import flatten
from thinjax.trace.graph import TracedGroup
from thinjax.trace.masking import gate_slices, gated
from thinjax.trace.network import TracedNet


@dataclasses.dataclass
class TracedScoreInputs(ScoreInputs):
    """`ScoreInputs` whose `plan` is a `TracedNet` (its groups are the trace's)."""

    @property
    def groups(self) -> dict[str, TracedGroup]:
        return self.plan.groups


@functools.lru_cache(maxsize=8)
def _taylor_fn(module: nn.Module, net: TracedNet, train_kwargs: tuple):
    gates = {n: gate_slices(g) for n, g in net.groups.items()}

    def loss(m, variables, x, y):
        logits, _ = module.apply(gated(variables, gates, m), x, mutable=["batch_stats"],
                                 **dict(train_kwargs))
        logp = jax.nn.log_softmax(logits)
        return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1))

    return jax.jit(jax.grad(loss))


def taylor(net: TracedNet, module: nn.Module, variables: Any, batches: Iterable[dict],
           num_batches: int, train_kwargs: tuple = (("train", True),)) -> dict[str, np.ndarray]:
    """|d loss / d gate| of every channel, averaged over `num_batches` batches: one row
    per group (a mask applied to the variables, as the masked network is, scores 0)."""
    grad = _taylor_fn(module, net, train_kwargs)
    ones = {n: np.ones(g.size, np.float32) for n, g in net.groups.items()}
    acc = {n: 0.0 for n in ones}
    seen = 0
    for b in batches:
        g = jax.device_get(grad(ones, variables, b["image"], b["label"]))
        acc = {n: acc[n] + np.abs(np.asarray(g[n], np.float64)) for n in acc}
        seen += 1
        if seen >= num_batches:
            break
    if seen == 0:
        raise TraceError("criterion 'taylor' got no batches")
    return {n: (v / seen)[None] for n, v in acc.items()}


def _sites(net: TracedNet) -> dict[str, list[tuple[str, np.ndarray]]]:
    """Group -> [(module path of a gate, the gate's channel rows)]."""
    out = {}
    for n, g in net.groups.items():
        seen: dict[str, np.ndarray] = {}
        for s in gate_slices(g):
            seen.setdefault(s.path.rsplit("/", 1)[0] if "/" in s.path else "", s.rows[:, 0])
        out[n] = list(seen.items())
    return out


@functools.lru_cache(maxsize=8)
def _rank_fn(module: nn.Module, sites: tuple[str, ...], eval_kwargs: tuple):
    def wanted(mdl, method: str) -> bool:
        return method == "__call__" and "/".join(mdl.path) in sites

    def ranks(variables, x):
        _, st = module.apply(variables, x, capture_intermediates=wanted,
                             mutable=["intermediates"], **dict(eval_kwargs))
        out = {}
        for path, y in flatten(st["intermediates"]).items():
            y = y[0] if isinstance(y, tuple) else y
            if y.ndim != 4:
                raise TraceError(f"criterion 'hrank' needs HxW feature maps, but "
                                 f"{path.rsplit('/', 1)[0]} outputs shape {y.shape}; use "
                                 "taylor or a data-free criterion")
            y = jnp.moveaxis(jax.nn.relu(y.astype(jnp.float32)), -1, 1)   # N, C, H, W
            out[path.rsplit("/", 1)[0]] = jnp.mean(jnp.linalg.matrix_rank(y), axis=0)
        return out

    return jax.jit(ranks)


def hrank(net: TracedNet, module: nn.Module, variables: Any, batches: Iterable[dict],
          num_batches: int, eval_kwargs: tuple = (("train", False),)) -> dict[str, np.ndarray]:
    """Each channel's mean feature-map rank at every gate of its group (one row each)."""
    sites = _sites(net)
    fn = _rank_fn(module, tuple(sorted({p for v in sites.values() for p, _ in v})),
                  eval_kwargs)
    acc: dict[str, np.ndarray] = {}
    seen = 0
    for b in batches:
        r = jax.device_get(fn(variables, b["image"]))
        acc = {k: acc.get(k, 0.0) + np.asarray(v, np.float64) for k, v in r.items()}
        seen += 1
        if seen >= num_batches:
            break
    if seen == 0:
        raise TraceError("criterion 'hrank' got no batches")
    return {n: np.stack([acc[p][rows] / seen for p, rows in v]) for n, v in sites.items()}


DATA = {"taylor": taylor, "hrank": hrank}


def compute_masks(net: TracedNet, variables: Any, spec: prune_spec.PruneSpec,
                  target: Target, seed: int = 0, *, masks: Mapping | None = None,
                  module: nn.Module | None = None, batches: Iterable[dict] | None = None
                  ) -> Allocation:
    """Scores `net`'s groups with ``spec.criterion`` and allocates `target` on top of
    `masks` (masks only shrink), as `thinjax.prune.pruner.compute_masks` does on a plan.
    taylor and hrank need `module` (called ``apply(v, x, train=...)``) and training
    `batches` ({'image', 'label'})."""
    if spec.allow_block_removal:
        raise TraceError("allow_block_removal: traced groups never fall to zero channels "
                         "(the trace does not know which branch could go); leave it False")
    if needs_data(spec.criterion):
        if module is None or batches is None:
            raise TraceError(f"criterion={spec.criterion!r} needs the masked model's forward "
                             "pass on training batches, which a one-shot prune without data "
                             "does not have (the prune command: --data=DATASET); use l1, l2, "
                             "fpgm, group_norm, bn_scale or random")
        raw = DATA[spec.criterion](net, module, variables, batches, spec.taylor_batches)
        scores = {n: REDUCE[spec.reduce](np.asarray(raw[n], np.float64).reshape(-1, g.size),
                                         axis=0) for n, g in net.groups.items()}
    else:
        inputs = TracedScoreInputs(net, variables, masks=dict(masks) if masks else None,
                                   seed=seed, members=spec.score_members,
                                   fpgm_p=int(spec.fpgm_p))
        scores = score_groups(inputs, spec.criterion, spec.reduce)
    return allocate(net, scores, target, method=spec.allocation,
                    masks=dict(masks) if masks else None, round_to=spec.round_to,
                    normalization=spec.normalization,
                    group_ratios=tuple(tuple(x) for x in spec.group_ratios))
