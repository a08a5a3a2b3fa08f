"""BatchNorm with a hand-written backward pass (the fused form PyTorch's kernel uses).

Flax's ``nn.BatchNorm`` is differentiated by JAX's autodiff, which follows the forward
computation step by step: the backward pass of ``(x - mean) * rsqrt(var + eps)`` sums over
the batch once for each path through mean and variance, and keeps intermediates alive
between them. Written out, the gradient of training-mode BatchNorm is one expression,

    dx = a * dy + b * (x - mean) + c        (a, b, c per channel)

whose per-channel constants need only two sums over the batch, ``sum(dy)`` and
``sum(dy * (x - mean))``, which XLA computes in one pass over ``dy`` and ``x``. That is what
`batch_norm_train` does (`jax.custom_vjp`); it also takes the cotangents of the returned
mean and variance, so it is the exact gradient of its outputs, not only of ``y``.

`BatchNorm` is a drop-in for ``nn.BatchNorm(use_fast_variance=False)``: the same variables
(``params/{scale,bias}``, ``batch_stats/{mean,var}``, float32), the same biased batch
variance ``mean((x - mean)^2)`` (two passes, stable for channels with a large mean), the
same running-average update, and inference with the running statistics. Statistics are
computed in float32 whatever the compute dtype. Everything per element is computed in the
lane-dense view of `thinjax.ops.lanes` (vector code for any channel count).
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from thinjax.ops import lanes

__all__ = ["BatchNorm", "batch_norm_train"]


def _stats(v32, c: int, hold):
    """Per-channel mean and biased variance (two passes) of a float32 lane view."""
    n = v32.size // c
    mean = lanes.channel_sum(v32, c) / n
    k = v32.shape[-1] // c
    var = lanes.channel_sum(jnp.square(v32 - lanes.per_channel(mean, k, hold)), c) / n
    return mean, var


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def batch_norm_train(x, scale, bias, epsilon: float, hold=None):
    """Training-mode BatchNorm over every axis but the last.

    Returns ``(y, mean, var)``: ``y = (x - mean) * scale / sqrt(var + epsilon) + bias`` in
    ``x``'s dtype, and the float32 batch mean and biased batch variance. `hold`: see
    `thinjax.ops.lanes.per_channel`."""
    return _forward(x, scale, bias, epsilon, hold)[0]


def _normalize(x, mean, inv, scale, bias, dtype, hold=None):
    """(x - mean) * scale * inv + bias in float32, cast to `dtype`; `x` channel-minor,
    computed in its lane view (`thinjax.ops.lanes`)."""
    a = scale.astype(jnp.float32) * inv
    return lanes.lanewise(lambda v, m, a, b: ((v.astype(jnp.float32) - m) * a + b).astype(dtype),
                          x, mean, a, bias.astype(jnp.float32), hold=hold)


def _forward(x, scale, bias, epsilon, hold):
    c, k = x.shape[-1], lanes.lane_factor(x.shape)
    mean, var = _stats(lanes.to_lanes(x, k).astype(jnp.float32), c, hold)
    inv = jax.lax.rsqrt(var + epsilon)
    y = _normalize(x, mean, inv, scale, bias, x.dtype, hold)
    return (y, mean, var), (x, mean, inv, scale)


def _bwd(epsilon, hold, res, cts):
    x, mean, inv, scale = res
    dy, dmean, dvar = cts
    c, k = x.shape[-1], lanes.lane_factor(x.shape)
    n = x.size // c
    dy32 = lanes.to_lanes(dy, k).astype(jnp.float32)
    tile = functools.partial(lanes.per_channel, k=k, hold=hold)
    xc = lanes.to_lanes(x, k).astype(jnp.float32) - tile(mean)
    sum_dy = lanes.channel_sum(dy32, c)
    sum_dy_xc = lanes.channel_sum(dy32 * xc, c)
    g = scale.astype(jnp.float32) * inv
    dscale = sum_dy_xc * inv
    dbias = sum_dy
    # y = g * (x - mean) + bias, mean = E[x], var = E[(x - mean)^2]:
    # dx = g dy - g/n sum(dy) - g inv^2/n sum(dy xc) xc + dmean/n + 2 dvar/n xc
    b = (2.0 * dvar - g * inv * inv * sum_dy_xc) / n
    c0 = (dmean - g * sum_dy) / n
    dx = lanes.from_lanes((tile(g) * dy32 + tile(b) * xc + tile(c0)).astype(x.dtype), x.shape)
    return dx, dscale.astype(scale.dtype), dbias.astype(scale.dtype)


batch_norm_train.defvjp(_forward, _bwd)


class BatchNorm(nn.Module):
    """``nn.BatchNorm`` over the last axis, with `batch_norm_train`'s fused backward pass.

    Same fields (those thinjax uses), variables and numerics as
    ``nn.BatchNorm(use_fast_variance=False)``."""
    use_running_average: bool | None = None
    momentum: float = 0.99
    epsilon: float = 1e-5
    dtype: Any = None
    param_dtype: Any = jnp.float32
    scale_init: Any = nn.initializers.ones
    bias_init: Any = nn.initializers.zeros
    hold: Any = None  # thinjax.ops.lanes.per_channel's (ResNet passes oneDNN's identity)

    @nn.compact
    def __call__(self, x, use_running_average: bool | None = None):
        use_ra = nn.merge_param("use_running_average", self.use_running_average,
                                use_running_average)
        c = x.shape[-1]
        ra_mean = self.variable("batch_stats", "mean", lambda s: jnp.zeros(s, jnp.float32), (c,))
        ra_var = self.variable("batch_stats", "var", lambda s: jnp.ones(s, jnp.float32), (c,))
        scale = self.param("scale", self.scale_init, (c,), self.param_dtype)
        bias = self.param("bias", self.bias_init, (c,), self.param_dtype)
        dtype = self.dtype or jnp.result_type(x, scale)
        if use_ra:
            inv = jax.lax.rsqrt(ra_var.value + self.epsilon)
            return _normalize(x, ra_mean.value, inv, scale, bias, dtype, self.hold)
        y, mean, var = batch_norm_train(x.astype(dtype), scale, bias, self.epsilon, self.hold)
        if not self.is_initializing():
            ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
            ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var
        return y
