"""Jit-able train and eval steps: pure functions of (state, batch)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

from thinjax import optim
from thinjax.trace.networks import Network, apply_kwargs, network
from thinjax.train.mix import mix
from thinjax.train.state import TrainState


@dataclasses.dataclass(frozen=True)
class StepConfig:
    num_classes: int
    label_smoothing: float = 0.0
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    loss: str = "softmax"
    grad_accum: int = 1
    ema: bool = True
    ema_decay: float = 0.999
    ema_every: int = 1
    ema_copy_until: int = 0       # steps during which the EMA copies the weights
    bn_l1: float = 0.0            # L1 penalty on BN scales (network slimming)
    prune_reg: Callable | None = None  # (params, step) -> penalty: thinjax.prune.regularize


def bn_scale_l1(params) -> jax.Array:
    """Sum of |gamma| over every BatchNorm scale."""
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    return sum(jnp.sum(jnp.abs(x)) for p, x in flat
               if str(p[-1].key) == "scale" and str(p[-2].key).startswith("bn"))


def apply_masks(state: TrainState, plan) -> TrainState:
    """Zeroes every pruned channel's weights, BN statistics, optimizer moments and EMA, so
    that nothing leaks back into a pruned channel (weight decay, momentum, EMA). `plan`: a
    `Plan` or a network (`thinjax.trace.networks`; a traced one's masks act here alone)."""
    if not state.masks:
        return state
    net = network(plan)
    m = lambda t: net.mask_tree(t, state.masks)  # noqa: E731
    return state.replace(params=m(state.params), batch_stats=m(state.batch_stats),
                         opt_state=m(state.opt_state), ema_params=m(state.ema_params),
                         ema_batch_stats=m(state.ema_batch_stats))


def _gradients(state: TrainState, images, targets, labels, *, model, cfg: StepConfig,
               net: Network):
    """Mean gradients over cfg.grad_accum micro-batches (a scan when > 1), the updated BN
    statistics, the loss and the accuracy."""
    loss_fn = optim.binary_cross_entropy if cfg.loss == "bce" else optim.cross_entropy
    masks = apply_kwargs(net, state.masks or None)

    def micro(params, batch_stats, x, t, y):
        def f(p):
            logits, upd = model.apply({"params": p, "batch_stats": batch_stats}, x, train=True,
                                      mutable=["batch_stats"], **masks)
            upd = {"batch_stats": {}, **upd}  # a network without BatchNorm updates none
            loss = jnp.mean(loss_fn(logits, t))
            if cfg.bn_l1:
                loss = loss + cfg.bn_l1 * bn_scale_l1(p)
            if cfg.prune_reg is not None:
                loss = loss + cfg.prune_reg(p, state.step)
            return loss, (logits, upd["batch_stats"])
        (loss, (logits, new_bs)), g = jax.value_and_grad(f, has_aux=True)(params)
        acc = jnp.mean(jnp.argmax(logits, -1) == y)
        return g, new_bs, loss, acc

    if cfg.grad_accum == 1:
        return micro(state.params, state.batch_stats, images, targets, labels)
    k = cfg.grad_accum
    split = lambda a: a.reshape((k, a.shape[0] // k) + a.shape[1:])  # noqa: E731

    def body(carry, xs):
        g_sum, bs = carry
        g, bs, l, a = micro(state.params, bs, *xs)
        return (jax.tree.map(jnp.add, g_sum, g), bs), (l, a)

    zeros = jax.tree.map(jnp.zeros_like, state.params)
    (grads, batch_stats), (ls, accs) = jax.lax.scan(
        body, (zeros, state.batch_stats), (split(images), split(targets), split(labels)))
    return jax.tree.map(lambda g: g / k, grads), batch_stats, jnp.mean(ls), jnp.mean(accs)


def _ema(state: TrainState, params, batch_stats, step, cfg: StepConfig):
    """The EMA weights and statistics after `step`: a copy of the weights during the first
    cfg.ema_copy_until steps, then an update every cfg.ema_every steps."""
    ema_params, ema_bs = state.ema_params, state.ema_batch_stats
    if not cfg.ema:
        return ema_params, ema_bs
    copy = step <= cfg.ema_copy_until
    update = (step % cfg.ema_every) == 0
    new_p = optim.ema_update(ema_params, params, cfg.ema_decay)
    new_b = optim.ema_update(ema_bs, batch_stats, cfg.ema_decay)
    pick = lambda c, u, old: jax.tree.map(  # noqa: E731
        lambda a, b, o: jnp.where(copy, a, jnp.where(update, b, o)), c, u, old)
    return pick(params, new_p, ema_params), pick(batch_stats, new_b, ema_bs)


def train_step(state: TrainState, batch: dict, *, model, tx: optax.GradientTransformation,
               schedule: Callable, cfg: StepConfig,
               net: Network | None = None) -> tuple[TrainState, dict]:
    """One optimizer step. `net` (`thinjax.trace.networks`; default: the plan of `model`,
    a ResNet) says how the state's masks act."""
    net = network(model.plan, model) if net is None else net
    rng = jax.random.wrap_key_data(state.rng)
    rng, r_mix = jax.random.split(rng)
    labels = batch["label"]
    targets = optim.smooth_labels(labels, cfg.num_classes, cfg.label_smoothing)
    images, targets = mix(r_mix, batch["image"], targets, cfg.mixup_alpha, cfg.cutmix_alpha)
    grads, batch_stats, loss, acc = _gradients(state, images, targets, labels, model=model,
                                               cfg=cfg, net=net)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    grad_norm = optax.global_norm(grads)
    # a step whose loss, gradient or update is not finite is not applied
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & jnp.all(jnp.stack(
        [jnp.all(jnp.isfinite(u)) for u in jax.tree.leaves(updates)]))  # a norm would overflow
    step = state.step + 1
    ema_params, ema_bs = _ema(state, params, batch_stats, step, cfg)
    new = TrainState(step=step, params=params, batch_stats=batch_stats, opt_state=opt_state,
                     ema_params=ema_params, ema_batch_stats=ema_bs,
                     rng=jax.random.key_data(rng), masks=state.masks)
    new = apply_masks(new, net)
    # a non-finite step leaves the state as it was; the loop stops the run
    new = jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, state)
    metrics = {"loss": loss, "accuracy": acc, "lr": schedule(state.step),
               "grad_norm": grad_norm, "finite": finite}
    return new, metrics
