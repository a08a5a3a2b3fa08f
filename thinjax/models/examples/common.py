"""What the example networks share: torchvision's channel rounding, PyTorch's initialisers,
and a parameter count.

Every example is a plain Flax linen module built from ``nn.Conv``, ``nn.Dense``,
``nn.DenseGeneral``, ``nn.ConvTranspose``, ``nn.BatchNorm`` and ``nn.LayerNorm`` with
explicit, readable names (no ``Conv_0``), so that a parameter path such as
``params/block3/dw/conv/kernel`` names one layer of the architecture. Convolutions pad
symmetrically (PyTorch's ``padding=k // 2``), so the PyTorch twins
(`thinjax.models.examples.torch_twins`) compute the same numbers.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from flax import traverse_util

# torchvision's initialisers: kaiming normal (fan_out) for convolutions, N(0, 0.01) for the
# classifier, truncated normal (std 0.02) for transformer-style dense layers
conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
head_init = nn.initializers.normal(0.01)
dense_init = nn.initializers.truncated_normal(0.02)


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """torchvision's ``_make_divisible``: `value` rounded to the nearest multiple of
    `divisor` (at least `min_value`, default `divisor`), never more than 10% below it."""
    min_value = divisor if min_value is None else min_value
    new = max(min_value, int(value + divisor / 2) // divisor * divisor)
    return new + divisor if new < 0.9 * value else new


def scaled(channels: int, width: float, divisor: int = 8) -> int:
    """`channels` times the width multiplier `width`, rounded as torchvision rounds
    MobileNet widths (`make_divisible`); ``width == 1`` keeps `channels` when it is
    already a multiple of `divisor`."""
    return make_divisible(channels * width, divisor)


def param_count(module: nn.Module, shape: tuple[int, ...]) -> int:
    """The number of entries in ``params`` of `module` for an input of `shape` (computed
    from shapes alone, nothing is allocated)."""
    x = jax.ShapeDtypeStruct(shape, np.float32)
    variables = jax.eval_shape(lambda x: module.init(jax.random.key(0), x), x)
    return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(variables["params"]))


def random_variables(module: nn.Module, shape: tuple[int, ...], seed: int = 0) -> Any:
    """Variables of `module` for NHWC input `shape` drawn at random (numpy float32):
    kernels N(0, 2/fan_in), BatchNorm variances in [0.5, 2], norm scales and layer scales
    in [0.5, 1.5], everything else (biases, means, tokens) N(0, 0.1). For pruning tests and
    benchmarks: ``init``'s zero biases and unit statistics would hide a misplaced slice."""
    rng = np.random.default_rng(seed)
    abstract = jax.eval_shape(lambda x: module.init(jax.random.key(0), x),
                              jax.ShapeDtypeStruct(shape, np.float32))

    def draw(path: tuple[str, ...], s: tuple[int, ...]) -> np.ndarray:
        if path[-1] == "kernel":
            return rng.normal(0, math.sqrt(2 / math.prod(s[:-1])), s)
        if path[-1] == "var":
            return rng.uniform(0.5, 2.0, s)
        if path[-1] in ("scale", "gamma"):
            return rng.uniform(0.5, 1.5, s)
        return rng.normal(0, 0.1, s)

    flat = traverse_util.flatten_dict(abstract)
    return traverse_util.unflatten_dict({k: draw(k, a.shape).astype(np.float32)
                                         for k, a in flat.items()})
