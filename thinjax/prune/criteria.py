"""Importance criteria: a score per channel of every group (higher = more important).

A criterion is a function ``f(inputs: ScoreInputs) -> {group name: array [members, C]}``:
one row per member it scores (a producer's filter norms, a BN's scales, ...), reduced over
members by ``reduce`` (mean, sum or max) into one score per channel. Built in:

  ``l1`` / ``l2``  norms of the producing conv filters (Li et al. 2017)
  ``bn_scale``     |gamma| of the producing BatchNorms (network slimming, Liu et al. 2017;
                   train with ``prune.bn_l1`` > 0 to push scales towards zero first)
  ``taylor``       first-order Taylor, |sum over a batch of activation x gradient| of each
                   channel (Molchanov et al. 2019), accumulated over ``taylor_batches``;
                   computed as |d loss / d mask|, summed over the group's producers
  ``random``       uniform noise (a baseline)

Adding one:

    from thinjax.prune.criteria import register

    @register("my_norm")
    def my_norm(inp):
        flat = inp.flat_params()
        return {n: np.stack([my_score(flat[k]) for k in g.kernels])
                for n, g in inp.groups.items()}

then ``--config.prune.criterion=my_norm`` (import your module first, e.g. from a config).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Iterable

import numpy as np

from thinjax.plan import Plan
from thinjax.prune.groups import Group, channel_groups, flatten

CRITERIA: dict[str, Callable[["ScoreInputs"], dict[str, np.ndarray]]] = {}


def register(name: str):
    def deco(fn):
        CRITERIA[name] = fn
        return fn
    return deco


@dataclasses.dataclass
class ScoreInputs:
    plan: Plan
    variables: dict                      # {'params', 'batch_stats'}
    masks: dict | None = None            # current masks (data-driven criteria use them)
    model: Any = None                    # ResNet(plan), for data-driven criteria
    batches: Iterable[dict] | None = None  # {'image', 'label'} batches (taylor)
    num_batches: int = 8
    seed: int = 0

    @property
    def groups(self) -> dict[str, Group]:
        return channel_groups(self.plan)

    def flat_params(self) -> dict[str, np.ndarray]:
        return {k: np.asarray(v) for k, v in flatten(self.variables["params"]).items()}


def _filter_norm(ord_: int):
    def crit(inp: ScoreInputs) -> dict[str, np.ndarray]:
        flat = inp.flat_params()
        out = {}
        for n, g in inp.groups.items():
            rows = []
            for k in g.kernels:
                w = flat[k].reshape(-1, flat[k].shape[-1])
                rows.append(np.abs(w).sum(0) if ord_ == 1 else np.sqrt((w * w).sum(0)))
            out[n] = np.stack(rows)
        return out
    return crit


register("l1")(_filter_norm(1))
register("l2")(_filter_norm(2))


@register("bn_scale")
def bn_scale(inp: ScoreInputs) -> dict[str, np.ndarray]:
    flat = inp.flat_params()
    return {n: np.stack([np.abs(flat[k]) for k in g.bn_scales]) for n, g in inp.groups.items()}


@register("random")
def random(inp: ScoreInputs) -> dict[str, np.ndarray]:
    r = np.random.default_rng(inp.seed)
    return {n: r.random((1, g.size)) for n, g in inp.groups.items()}


@functools.lru_cache(maxsize=8)
def _mask_grad_fn(model):
    import jax
    import jax.numpy as jnp

    def loss(masks, variables, x, y):
        logits, _ = model.apply(variables, x, train=True, masks=masks, mutable=["batch_stats"])
        logp = jax.nn.log_softmax(logits)
        return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1))

    return jax.jit(jax.grad(loss))


@register("taylor")
def taylor(inp: ScoreInputs) -> dict[str, np.ndarray]:
    import jax
    if inp.model is None or inp.batches is None:
        raise ValueError("criterion 'taylor' needs data: give the model and training batches "
                         "(in thinjax.convert: --data=DATASET)")
    from thinjax.prune.groups import init_masks
    masks = inp.masks if inp.masks is not None else init_masks(inp.plan)
    masks = {k: np.asarray(v, np.float32) for k, v in masks.items()}
    grad = _mask_grad_fn(inp.model)
    acc = {n: 0.0 for n in masks}
    seen = 0
    for b in inp.batches:
        g = jax.device_get(grad(masks, inp.variables, b["image"], b["label"]))
        for n in acc:
            acc[n] = acc[n] + np.abs(g[n])
        seen += 1
        if seen >= inp.num_batches:
            break
    if seen == 0:
        raise ValueError("criterion 'taylor' got no batches")
    return {n: np.asarray(v, np.float64)[None] / seen for n, v in acc.items()}


REDUCE = {"mean": np.mean, "sum": np.sum, "max": np.max}
NORMALIZE = ("mean", "max", "sum", "none")


def score_groups(inp: ScoreInputs, criterion: str = "l1", reduce: str = "mean"
                 ) -> dict[str, np.ndarray]:
    """One score per channel per group: the criterion's member rows reduced."""
    if criterion not in CRITERIA:
        raise ValueError(f"unknown pruning criterion {criterion!r}; available: "
                         f"{', '.join(sorted(CRITERIA))} (or register your own, see "
                         "thinjax.prune.criteria)")
    if reduce not in REDUCE:
        raise ValueError(f"unknown group reduction {reduce!r}; use one of {', '.join(REDUCE)}")
    raw = CRITERIA[criterion](inp)
    out = {}
    for n, g in inp.groups.items():
        rows = np.asarray(raw[n], np.float64).reshape(-1, g.size)
        out[n] = REDUCE[reduce](rows, axis=0)
    return out


def normalize(scores: dict[str, np.ndarray], masks: dict | None, how: str = "mean"
              ) -> dict[str, np.ndarray]:
    """Per-group normalisation before a global ranking: divide each group's scores by their
    mean / max / sum over the group's live channels (or leave them: 'none')."""
    if how not in NORMALIZE:
        raise ValueError(f"unknown score normalisation {how!r}; use one of "
                         f"{', '.join(NORMALIZE)}")
    out = {}
    for n, s in scores.items():
        live = s if masks is None else s[np.asarray(masks[n]) > 0]
        if how == "none" or live.size == 0:
            out[n] = s
            continue
        d = {"mean": np.mean, "max": np.max, "sum": np.sum}[how](live)
        out[n] = s / d if d > 0 else s
    return out
