"""Optimisation recipes with Optax: schedules, weight-decay masks, optimisers, EMA, losses.

Everything is a pure function of the config and of pytrees:
  * `learning_rate_schedule`: linear warmup from `warmup_init` x peak, then cosine to 0
    (or constant / step), the peak scaled linearly with the batch (`lr * batch / lr_batch`);
  * `weight_decay_mask`: per-parameter rule by regex on the parameter path (default:
    conv and dense kernels only, no BN parameters, no biases);
  * `make_optimizer`: SGD (momentum, PyTorch-style coupled weight decay), LAMB or AdamW;
  * `ema_update`: exponential moving average of parameters and BN statistics;
  * `cross_entropy` / `binary_cross_entropy` with label smoothing, on soft targets.
"""

from __future__ import annotations

import re
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import traverse_util

from thinjax.errors import ConfigError


def scaled_lr(cfg, global_batch: int) -> float:
    """Peak learning rate: cfg.lr at cfg.lr_batch, scaled linearly with the global batch."""
    return cfg.lr * global_batch / cfg.lr_batch


def learning_rate_schedule(cfg, global_batch: int, steps_per_epoch: int,
                           total_steps: int) -> optax.Schedule:
    """The learning rate at each optimizer step of a `total_steps` run."""
    peak = scaled_lr(cfg, global_batch)
    total = max(1, total_steps)
    warmup = min(int(round(cfg.warmup_epochs * steps_per_epoch)), total - 1)
    if cfg.schedule == "cosine":
        main = optax.cosine_decay_schedule(peak, max(1, total - warmup), alpha=0.0)
    elif cfg.schedule == "constant":
        main = optax.constant_schedule(peak)
    elif cfg.schedule == "step":
        bounds = {int(e * steps_per_epoch) - warmup: 0.1 for e in cfg.step_epochs}
        main = optax.piecewise_constant_schedule(peak, bounds)
    else:
        raise ConfigError(f"optim.schedule {cfg.schedule!r} unknown; use cosine, constant or step")
    if warmup == 0:
        return main
    warm = optax.linear_schedule(peak * cfg.warmup_init, peak, warmup)
    return optax.join_schedules([warm, main], [warmup])


def weight_decay_mask(params, pattern: str) -> Any:
    """True for parameters whose '/'-joined path matches `pattern` (re.search)."""
    rx = re.compile(pattern)
    flat = traverse_util.flatten_dict(params, sep="/")
    return traverse_util.unflatten_dict({k: bool(rx.search(k)) for k in flat}, sep="/")


def make_optimizer(cfg, schedule: optax.Schedule, params) -> optax.GradientTransformation:
    mask = weight_decay_mask(params, cfg.weight_decay_on)
    if cfg.name == "sgd":
        tx = optax.chain(
            optax.add_decayed_weights(cfg.weight_decay, mask),  # PyTorch SGD: g += wd * p
            optax.sgd(schedule, momentum=cfg.momentum or None, nesterov=cfg.nesterov))
    elif cfg.name == "lamb":
        tx = optax.lamb(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                        weight_decay=cfg.weight_decay, mask=mask)
    elif cfg.name == "adamw":
        tx = optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                         weight_decay=cfg.weight_decay, mask=mask)
    else:
        raise ConfigError(f"optim.name {cfg.name!r} unknown; use sgd, lamb or adamw")
    if cfg.clip_grad_norm:
        tx = optax.chain(optax.clip_by_global_norm(cfg.clip_grad_norm), tx)
    return tx


def ema_decay(cfg, global_batch: int, epochs: float) -> float:
    """Decay per EMA update. With `adjust`, torchvision's reference rule:
    alpha = min(1, (1 - decay) * batch * every / epochs)."""
    if not cfg.adjust:
        return cfg.decay
    alpha = min(1.0, (1.0 - cfg.decay) * global_batch * cfg.every / max(epochs, 1e-9))
    return 1.0 - alpha


def ema_update(ema, new, decay: float | jax.Array):
    return jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p.astype(e.dtype), ema, new)


def smooth_labels(labels: jax.Array, num_classes: int, smoothing: float) -> jax.Array:
    onehot = jax.nn.one_hot(labels, num_classes)
    return onehot * (1.0 - smoothing) + smoothing / num_classes


def cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Per-example cross-entropy against soft targets (rows summing to 1)."""
    return -jnp.sum(targets * jax.nn.log_softmax(logits.astype(jnp.float32)), axis=-1)


def binary_cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Per-example BCE averaged over classes, soft targets ("ResNet strikes back", timm's
    BinaryCrossEntropy with reduction='mean')."""
    return jnp.mean(optax.sigmoid_binary_cross_entropy(logits.astype(jnp.float32), targets),
                    axis=-1)
