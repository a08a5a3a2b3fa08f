"""A U-Net (Ronneberger et al., 2015) in Flax linen, with BatchNorm and same-size
convolutions, a width multiplier and small defaults; per-pixel logits.

Layers (parameter paths under ``params``; BatchNorm statistics under ``batch_stats``),
for L = ``len(features)`` levels of widths ``f[i] = make_divisible(features[i] * width)``:

* ``enc{i}`` for i = 0..L-1, a double convolution ``{conv1,bn1,conv2,bn2}`` (3x3,
  bias-free, BN, ReLU, twice) to ``f[i]`` channels, after a 2x2 max pooling for i > 0;
  ``enc{L-1}`` is the bottleneck;
* for i = L-2..0: ``dec{i}_up``, a 2x2 transposed convolution of stride 2 (with bias)
  from ``f[i+1]`` to ``f[i]`` channels; the concatenation, along channels, of the
  upsampled map **first** and the skip (``enc{i}``'s output) second, so the skip's
  channels are input channels ``f[i] .. 2 f[i]`` of ``dec{i}/conv1``; then ``dec{i}``, a
  double convolution ``{conv1,bn1,conv2,bn2}`` to ``f[i]`` channels;
* ``head``: a 1x1 convolution (with bias) to `num_classes` logits per pixel.

Inputs must have sides divisible by ``2 ** (L - 1)``; the output is ``(N, H, W,
num_classes)``. Flax's ``ConvTranspose`` kernel is ``(2, 2, in, out)`` and is not flipped
(``transpose_kernel=False``); the PyTorch twin flips it. The convolutions (not the
transposed ones) are computed by `thinjax.ops.dense_conv` (oneDNN where the commands
enabled it).
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from thinjax.models.examples.common import conv_init, scaled
from thinjax.ops import dense_conv


class DoubleConv(nn.Module):
    """(3x3 conv, BN, ReLU) x 2, named ``conv1, bn1, conv2, bn2``."""
    features: int

    @nn.compact
    def __call__(self, x, train: bool = False):
        for k in (1, 2):
            x = nn.Conv(self.features, (3, 3), padding=1, use_bias=False,
                        kernel_init=conv_init, name=f"conv{k}",
                        conv_general_dilated=dense_conv.conv_general_dilated)(x)
            x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                             name=f"bn{k}")(x)
            x = nn.relu(x)
        return x


def max_pool(x):
    return nn.max_pool(x, (2, 2), (2, 2))


class UNet(nn.Module):
    """U-Net with width multiplier `width`; returns per-pixel logits."""
    num_classes: int = 2
    width: float = 1.0
    features: tuple[int, ...] = (32, 64, 128, 256)

    @nn.compact
    def __call__(self, x, train: bool = False):
        f = [scaled(c, self.width) for c in self.features]
        skips = []
        for i, c in enumerate(f):
            x = DoubleConv(c, name=f"enc{i}")(max_pool(x) if i else x, train)
            skips.append(x)
        for i in reversed(range(len(f) - 1)):
            up = nn.ConvTranspose(f[i], (2, 2), (2, 2), padding="VALID", name=f"dec{i}_up")(x)
            x = DoubleConv(f[i], name=f"dec{i}")(jnp.concatenate([up, skips[i]], -1), train)
        return nn.Conv(self.num_classes, (1, 1), name="head",
                       conv_general_dilated=dense_conv.conv_general_dilated)(x)
