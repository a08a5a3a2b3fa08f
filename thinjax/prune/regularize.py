"""Training-time regularisers that prepare a network for pruning (``prune.regularizer``).

Both act on whole channels of the coupled groups (`thinjax.prune.groups`): a channel's
*slices* are its producing conv filters (output axis), its producing BatchNorms' scale and
shift, and its consumers' input slices (the next convs' input channels, the classifier's
input rows). With s_{g,c} = sum over those slices of the squared weights:

  ``group_lasso``  DepGraph's sparse learning (Fang et al., CVPR 2023):
                   lambda * sum_g sum_c sqrt(s_{g,c}),  lambda = ``reg_strength``;
                   the group lasso drives whole channels to zero together.
  ``greg``         growing regularisation, GReg-1 (Wang et al., ICLR 2021):
                   lambda_t / 2 * sum over the channels selected for removal of s_{g,c},
                   lambda_t = min(``greg_ceiling``, ``greg_step`` * floor(t / ``greg_every``))
                   (t: the optimizer step). The selection is made once, by the criterion
                   and target of the ``prune`` section, from the weights at the start of
                   regularisation (`build`), and held as a constant (keep-masks: 0 = to
                   be removed) in the `Regularizer`; the pruning event then removes them.

`penalty` is the pure function; `build` makes the `Regularizer` that the train step adds
to its loss (``StepConfig.prune_reg``), on the dense plan only (after materialisation the
step runs without it). Pruned (masked) channels contribute nothing.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from thinjax.plan import Plan
from thinjax.prune.groups import flatten
from thinjax.prune.pruner import compute_masks, target_from_config
from thinjax.prune.search import network_groups

REGULARIZERS = ("none", "group_lasso", "greg")


def channel_sq_norms(params: Any, plan: Plan | Any) -> dict[str, jax.Array]:
    """Group -> [channels]: the sum over the channel's slices (producer filters, BN scale
    and shift, consumer input slices) of the squared weights (`plan`: a plan, or a traced
    network, whose channel j may sit at other or several indices: `Group.rows`)."""
    flat = flatten(params)
    out = {}
    for n, g in network_groups(plan).items():
        s = jnp.zeros((g.size,), jnp.float32)
        for path, axis in g.producers + g.consumers:
            if path in flat:        # BN mean / var live in batch_stats, not in params
                w = jnp.moveaxis(flat[path].astype(jnp.float32), axis, 0)
                rows = g.rows(path, axis)
                w = w if rows is None else w[rows]
                s = s + jnp.sum(jnp.reshape(w * w, (g.size, -1)), axis=1)
        out[n] = s
    return out


def _safe_sqrt(x: jax.Array) -> jax.Array:
    """sqrt with a zero (not NaN) gradient at 0: masked channels are exactly zero."""
    pos = x > 0
    return jnp.where(pos, jnp.sqrt(jnp.where(pos, x, 1.0)), 0.0)


def greg_coefficient(cfg_prune: Any, step: jax.Array | int) -> jax.Array:
    """lambda_t = min(ceiling, greg_step * floor(step / greg_every))."""
    grown = cfg_prune.greg_step * (jnp.asarray(step) // max(1, int(cfg_prune.greg_every)))
    return jnp.minimum(jnp.float32(cfg_prune.greg_ceiling), grown.astype(jnp.float32))


def penalty(params: Any, plan: Plan | Any, cfg_prune: Any, step: jax.Array | int,
            masks: dict | None) -> jax.Array:
    """The ``cfg_prune.regularizer`` penalty of `params` (a scalar; jit-able).

    `masks`: keep-masks, one vector per group. ``group_lasso``: the current pruning masks
    (None: every channel); masked channels are left out. ``greg``: the selection, required:
    the channels with mask 0 are the ones penalised."""
    kind = cfg_prune.regularizer
    if kind not in REGULARIZERS:
        raise ValueError(f"prune.regularizer {kind!r} unknown; use one of "
                         f"{', '.join(REGULARIZERS)}")
    if kind == "none":
        return jnp.float32(0.0)
    sq = channel_sq_norms(params, plan)
    if kind == "group_lasso":
        keep = (lambda n: 1.0) if masks is None else (lambda n: jnp.asarray(masks[n]))
        total = sum(jnp.sum(_safe_sqrt(s) * keep(n)) for n, s in sq.items())
        return jnp.float32(cfg_prune.reg_strength) * total
    if masks is None:
        raise ValueError("prune.regularizer 'greg' needs the channels selected for removal "
                         "(keep-masks; see thinjax.prune.regularize.build)")
    total = sum(jnp.sum(s * (1.0 - jnp.asarray(masks[n]))) for n, s in sq.items())
    return 0.5 * greg_coefficient(cfg_prune, step) * total


@dataclasses.dataclass(frozen=True, eq=False)
class Regularizer:
    """`penalty` bound to a plan, settings and masks: ``reg(params, step) -> scalar``.
    Its fields are named like the ``prune`` config keys, so it is its own ``cfg_prune``.
    `plan`: a plan or a traced network (`thinjax.trace.TracedNet`)."""
    plan: Plan | Any
    regularizer: str
    reg_strength: float = 0.0
    greg_step: float = 0.0
    greg_every: int = 1
    greg_ceiling: float = 0.0
    masks: dict | None = None

    def __call__(self, params: Any, step: jax.Array | int) -> jax.Array:
        check_shapes(params, self.plan)
        return penalty(params, self.plan, self, step, self.masks)


def check_shapes(params: Any, plan: Plan | Any) -> None:
    """Raises ValueError unless `params` has `plan`'s channel counts (a regulariser built
    for the dense plan must not run on the materialised network: drop it there)."""
    flat = flatten(params)
    for n, g in network_groups(plan).items():
        path, axis = g.kernel_members[0]
        if path not in flat or flat[path].shape[axis] != g.size:
            raise ValueError(f"the pruning regulariser was built for {plan.describe()}, but "
                             f"the parameters do not match its group {n!r} ({g.size} "
                             "channels); after materialisation train without it "
                             "(StepConfig.prune_reg=None)")


def build(plan: Plan | Any, cfg_prune: Any, variables: dict | None = None, *, target=None,
          masks: dict | None = None, model=None, batches=None, input_size: int = 32,
          seed: int = 0, select=compute_masks) -> Regularizer | None:
    """The `Regularizer` for ``cfg_prune.regularizer`` (None for ``none``).

    ``greg`` selects the channels to remove here, once: ``cfg_prune.criterion`` on
    `variables` (the weights at the start of regularisation), allocated to `target`
    (default: the config's target) on top of `masks`, by `select` (called as
    `thinjax.prune.pruner.compute_masks`, the default; a traced network passes its own).
    ``group_lasso`` skips the channels that `masks` already removes."""
    kind = cfg_prune.regularizer
    if kind not in REGULARIZERS:
        raise ValueError(f"prune.regularizer {kind!r} unknown; use one of "
                         f"{', '.join(REGULARIZERS)}")
    if kind == "none":
        return None
    if kind == "greg":
        if variables is None:
            raise ValueError("prune.regularizer 'greg' needs the weights to select from")
        target = target if target is not None else target_from_config(cfg_prune)
        masks = select(plan, variables, cfg_prune, target, masks=masks, model=model,
                       batches=batches, input_size=input_size, seed=seed).masks
    frozen = None if masks is None else {k: np.asarray(v, np.float32)
                                         for k, v in masks.items()}
    return Regularizer(plan, kind, float(cfg_prune.reg_strength), float(cfg_prune.greg_step),
                       int(cfg_prune.greg_every), float(cfg_prune.greg_ceiling), frozen)
