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
computed in float32 whatever the compute dtype.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

__all__ = ["BatchNorm", "batch_norm_train"]


def _stats(x32):
    axes = tuple(range(x32.ndim - 1))
    mean = jnp.mean(x32, axis=axes)
    var = jnp.mean(jnp.square(x32 - mean), axis=axes)
    return mean, var


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def batch_norm_train(x, scale, bias, epsilon: float):
    """Training-mode BatchNorm over every axis but the last.

    Returns ``(y, mean, var)``: ``y = (x - mean) * scale / sqrt(var + epsilon) + bias`` in
    ``x``'s dtype, and the float32 batch mean and biased batch variance."""
    return _forward(x, scale, bias, epsilon)[0]


def _normalize(x32, mean, inv, scale, bias, dtype):
    """(x - mean) * scale * inv + bias in float32, cast to `dtype`."""
    a = scale.astype(jnp.float32) * inv
    return ((x32 - mean) * a + bias.astype(jnp.float32)).astype(dtype)


def _forward(x, scale, bias, epsilon):
    x32 = x.astype(jnp.float32)
    mean, var = _stats(x32)
    inv = jax.lax.rsqrt(var + epsilon)
    y = _normalize(x32, mean, inv, scale, bias, x.dtype)
    return (y, mean, var), (x, mean, inv, scale)


def _bwd(epsilon, res, cts):
    x, mean, inv, scale = res
    dy, dmean, dvar = cts
    axes = tuple(range(x.ndim - 1))
    n = x.size // x.shape[-1]
    xc = x.astype(jnp.float32) - mean
    dy32 = dy.astype(jnp.float32)
    sum_dy = jnp.sum(dy32, axis=axes)
    sum_dy_xc = jnp.sum(dy32 * xc, axis=axes)
    g = scale.astype(jnp.float32) * inv
    dscale = sum_dy_xc * inv
    dbias = sum_dy
    # y = g * (x - mean) + bias, mean = E[x], var = E[(x - mean)^2]:
    # dx = g dy - g/n sum(dy) - g inv^2/n sum(dy xc) xc + dmean/n + 2 dvar/n xc
    b = (2.0 * dvar - g * inv * inv * sum_dy_xc) / n
    c = (dmean - g * sum_dy) / n
    dx = (g * dy32 + b * xc + c).astype(x.dtype)
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
            return _normalize(x.astype(jnp.float32), ra_mean.value, inv, scale, bias, dtype)
        y, mean, var = batch_norm_train(x.astype(dtype), scale, bias, self.epsilon)
        if not self.is_initializing():
            ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
            ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var
        return y
