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
  ``fpgm``         filter pruning via geometric median (He et al. 2019): the summed
                   Euclidean distance of each filter to the other filters of its layer
                   (small = near the geometric median = replaceable); ``fpgm_p`` >= 1
                   measures between |w|^p as Torch-Pruning's FPGMImportance(p) does
  ``hrank``        HRank (Lin et al. 2020): the average matrix rank of each channel's HxW
                   feature map over ``taylor_batches`` batches (eval-mode forward pass)
  ``group_norm``   DepGraph's group norm (Fang et al. 2023): the L2 norm of each channel's
                   slices over all scored members at once
  ``random``       uniform noise (a baseline)

Members: with ``members="producers"`` (``prune.score_members``, the default) the norm and
FPGM criteria score the producing conv filters only; with ``"all"`` they also score the
producing BatchNorms' scales (not FPGM) and the consumers' input slices (the next convs'
input channels, the classifier's input rows) -- Torch-Pruning's reduction over a whole
dependency group. Criteria that need data are listed in ``DATA_CRITERIA``.

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
from collections.abc import Callable, Iterable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from thinjax.models.batchnorm import BatchNorm
from thinjax.models.resnet import Block, ConvBN
from thinjax.plan import Plan
from thinjax.prune.groups import Group, channel_groups, flatten, init_masks

CRITERIA: dict[str, Callable[[ScoreInputs], dict[str, np.ndarray]]] = {}


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
    members: str = "producers"           # producers | all (+ BN scales, consumer slices)
    fpgm_p: int = 0                      # fpgm: 0 raw filters; p >= 1: |w|^p (Torch-Pruning)

    @property
    def groups(self) -> dict[str, Group]:
        return channel_groups(self.plan)

    def flat_params(self) -> dict[str, np.ndarray]:
        return {k: np.asarray(v) for k, v in flatten(self.variables["params"]).items()}


MEMBERS = ("producers", "all")
DATA_CRITERIA = ("taylor", "hrank")


def needs_data(criterion: str) -> bool:
    """True for criteria that need the model and training batches (``DATA_CRITERIA``)."""
    return criterion in DATA_CRITERIA


def member_slices(inp: ScoreInputs, group: Group, bn: bool = True) -> list[np.ndarray]:
    """Each scored member of `group` as a float64 [channels, rest] matrix: the producer
    conv filters, then (``inp.members == "all"``) the producing BN scales (if `bn`) and the
    consumers' input slices."""
    if inp.members not in MEMBERS:
        raise ValueError(f"unknown score members {inp.members!r}; use one of "
                         f"{', '.join(MEMBERS)}")
    flat = inp.flat_params()
    paths = list(group.kernel_members)
    if inp.members == "all":
        paths += [(k, 0) for k in group.bn_scales] if bn else []
        paths += list(group.consumers)
    out = []
    for path, axis in paths:
        w = np.moveaxis(np.asarray(flat[path], np.float64), axis, 0)
        rows = group.rows(path, axis)
        out.append((w if rows is None else w[rows]).reshape(group.size, -1))
    return out


def _filter_norm(ord_: int) -> Callable[[ScoreInputs], dict[str, np.ndarray]]:
    """The L1 / L2 norm of each member's slice (producer filters by default)."""
    def crit(inp: ScoreInputs) -> dict[str, np.ndarray]:
        return {n: np.stack([np.abs(w).sum(1) if ord_ == 1 else np.sqrt((w * w).sum(1))
                             for w in member_slices(inp, g)])
                for n, g in inp.groups.items()}
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
    def loss(masks, variables, x, y):
        logits, _ = model.apply(variables, x, train=True, masks=masks, mutable=["batch_stats"])
        logp = jax.nn.log_softmax(logits)
        return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1))

    return jax.jit(jax.grad(loss))


@register("taylor")
def taylor(inp: ScoreInputs) -> dict[str, np.ndarray]:
    if inp.model is None or inp.batches is None:
        raise ValueError("criterion 'taylor' needs data: give the model and training batches "
                         "(in thinjax.convert: --data=DATASET)")
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


def _distance_sums(rows: np.ndarray, live: np.ndarray) -> np.ndarray:
    """For each live row, the sum of its Euclidean distances to the other live rows (dead
    rows: 0)."""
    x = rows[live]
    sq = (x * x).sum(1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * (x @ x.T), 0.0)
    np.fill_diagonal(d2, 0.0)
    out = np.zeros(rows.shape[0])
    out[live] = np.sqrt(d2).sum(1)
    return out


@register("fpgm")
def fpgm(inp: ScoreInputs) -> dict[str, np.ndarray]:
    """FPGM (He et al., CVPR 2019): score_i = sum_j ||F_i - F_j||_2 over the filters F_j of
    the same member (layer), one row per member; filters near the geometric median (small
    sums) are the most replaceable. ``fpgm_p`` >= 1 takes the distances between |F|^p
    (Torch-Pruning's FPGMImportance(p)); 0 between the raw filters (the paper). Channels
    already masked are left out of the others' sums and score 0. BN scales never count."""
    out = {}
    for n, g in inp.groups.items():
        live = np.ones(g.size, bool) if inp.masks is None else np.asarray(inp.masks[n]) > 0
        rows = []
        for w in member_slices(inp, g, bn=False):
            if inp.fpgm_p:
                w = np.abs(w) ** inp.fpgm_p
            rows.append(_distance_sums(w, live))
        out[n] = np.stack(rows)
    return out


@register("group_norm")
def group_norm(inp: ScoreInputs) -> dict[str, np.ndarray]:
    """DepGraph's group-level L2 norm (Fang et al., CVPR 2023): sqrt of the sum over the
    scored members of each channel's squared slice (one row per group). With
    ``members="all"`` its square / (number of members) is Torch-Pruning's
    MagnitudeImportance(p=2, group_reduction="mean", normalizer=None)."""
    return {n: np.sqrt(sum((w * w).sum(1) for w in member_slices(inp, g)))[None]
            for n, g in inp.groups.items()}


@functools.lru_cache(maxsize=8)
def _rank_fn(model):
    """Jitted (variables, images, masks) -> {site: mean matrix rank per channel}: the
    channels' HxW feature maps captured from the eval-mode forward pass (the stem's and
    every block's output, and every block's inner BN outputs after mask and ReLU)."""
    def wanted(mdl, method: str) -> bool:
        return method == "__call__" and (
            isinstance(mdl, Block) or (isinstance(mdl, ConvBN) and mdl.name == "stem")
            or (isinstance(mdl, (nn.BatchNorm, BatchNorm)) and isinstance(mdl.parent, Block)
                and int(mdl.name[2:]) <= len(mdl.parent.inner)))

    def ranks(variables, x, masks):
        _, st = model.apply(variables, x, masks=masks, capture_intermediates=wanted,
                            mutable=["intermediates"])
        out = {}
        for path, (y,) in flatten(st["intermediates"]).items():
            site = path.rsplit("/", 1)[0]
            if site.rsplit("/", 1)[-1].startswith("bn"):   # an inner BN: mask, then ReLU
                y = y * masks[site[:-3] + "conv" + site[-1]]
            y = jnp.moveaxis(jax.nn.relu(y.astype(jnp.float32)), -1, 1)   # N, C, H, W
            out[site] = jnp.mean(jnp.linalg.matrix_rank(y), axis=0)
        return out

    return jax.jit(ranks)


def _rank_sites(plan: Plan, group: Group) -> list[str]:
    """The captured feature maps that carry `group`'s channels: an inner group's BN output;
    a stream's stem output and the outputs of every block writing into it."""
    if group.kind == "inner":
        return [group.name[:-len("convK")] + "bn" + group.name[-1]]
    sites = ["stem"] if "stem" in group.widths else []
    for si, s in enumerate(plan.stages):
        if f"stage{si + 1}" in group.widths:
            sites += [f"stage{si + 1}/block{bi}" for bi in range(len(s.blocks))]
    return sites


@register("hrank")
def hrank(inp: ScoreInputs) -> dict[str, np.ndarray]:
    """HRank (Lin et al., CVPR 2020): each channel's feature-map rank, rank(O_c) of the HxW
    map after BN, mask and ReLU, averaged over the images of ``num_batches`` batches
    (eval-mode forward pass, one jitted call per batch, SVDs batched over images and
    channels). One row per site that carries the group's channels (see `_rank_sites`)."""
    if inp.model is None or inp.batches is None:
        raise ValueError("criterion 'hrank' needs data: give the model and training batches "
                         "(callers feed batches to the criteria in "
                         "thinjax.prune.criteria.DATA_CRITERIA)")
    masks = inp.masks if inp.masks is not None else init_masks(inp.plan)
    masks = {k: np.asarray(v, np.float32) for k, v in masks.items()}
    fn = _rank_fn(inp.model)
    acc: dict[str, np.ndarray] = {}
    seen = 0
    for b in inp.batches:
        r = jax.device_get(fn(inp.variables, b["image"], masks))
        acc = {k: acc.get(k, 0.0) + np.asarray(v, np.float64) for k, v in r.items()}
        seen += 1
        if seen >= inp.num_batches:
            break
    if seen == 0:
        raise ValueError("criterion 'hrank' got no batches")
    return {n: np.stack([acc[s] / seen for s in _rank_sites(inp.plan, g)])
            for n, g in inp.groups.items()}


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
