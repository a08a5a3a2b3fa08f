"""Stateless random numbers for the augmentations: each draws all its numbers in one op
(every TensorFlow op in a tf.data function costs microseconds per image)."""

from __future__ import annotations

from thinjax.data._tf import tf


def uniforms(seed: tf.Tensor, n: int) -> tf.Tensor:
    """n float64 numbers uniform in [0, 1) from one stateless draw."""
    return tf.random.stateless_uniform([n], seed, dtype=tf.float64)


def below(u: tf.Tensor, n: tf.Tensor) -> tf.Tensor:
    """An integer uniform in [0, n) from `u` uniform in [0, 1): int32 floor(u * n)."""
    n = tf.cast(n, tf.int32)
    return tf.minimum(tf.cast(tf.floor(u * tf.cast(n, tf.float64)), tf.int32), n - 1)


def between(u: tf.Tensor, lo: float, hi: float) -> tf.Tensor:
    """`u` uniform in [0, 1) mapped to [lo, hi)."""
    return lo + (hi - lo) * u
