"""BatchNorm recalibration: re-estimate running statistics after pruning.

Removing channels changes what every later BatchNorm sees, so the stored running
means/variances go stale; a few forward passes in training mode (no gradient step)
re-estimate them and recover much of the accuracy a pruned network loses before any
fine-tuning (a standard step in pruning pipelines, e.g. EagleEye, Li et al. 2020).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import jax
import numpy as np

from thinjax.errors import DataError


def recalibrate_bn(model, variables: dict, batches: Iterable[dict], num_batches: int,
                   masks: dict | None = None) -> dict:
    """`variables` with batch statistics replaced by their average over `num_batches`
    batches (each batch's statistics computed in training mode, equally weighted)."""
    m0 = model.clone(bn_momentum=0.0)  # running stats := this batch's stats

    @jax.jit
    def batch_stats(v, x):
        _, upd = m0.apply(v, x, train=True, masks=masks, mutable=["batch_stats"])
        return upd["batch_stats"]

    return average_batch_stats(batch_stats, variables, batches, num_batches)


def average_batch_stats(stats: Callable, variables: dict, batches: Iterable[dict],
                        num_batches: int) -> dict:
    """`variables` with ``batch_stats`` := the mean of ``stats(variables, image batch)``
    (one batch's statistics) over the first `num_batches` of `batches`."""
    acc, n = None, 0
    for b in batches:
        s = jax.device_get(stats(variables, b["image"]))
        acc = s if acc is None else jax.tree.map(np.add, acc, s)
        n += 1
        if n >= num_batches:
            break
    if n == 0:
        raise DataError("BatchNorm recalibration got no batches")
    return {**variables, "batch_stats": jax.tree.map(lambda a: a / n, acc)}
