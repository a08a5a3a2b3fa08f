"""MobileNetV2 (Sandler et al., 2018) in Flax linen, torchvision's architecture with a
width multiplier, CIFAR-sized by default.

Layers (parameter paths under ``params``; BatchNorm statistics under ``batch_stats``):

* ``stem/{conv,bn}``: 3x3 convolution (stride `stem_stride`), BN, ReLU6;
* ``block{i}`` for i = 0..16, an inverted residual: ``expand/{conv,bn}`` (1x1 to
  ``t * in`` channels, BN, ReLU6; absent when the expansion t is 1), ``dw/{conv,bn}``
  (depthwise 3x3, ``feature_group_count`` = its channels, so its kernel is
  ``(3, 3, 1, C)``, computed as shifted multiply-adds by `thinjax.ops.depthwise`; BN,
  ReLU6), ``project/{conv,bn}`` (1x1, BN, no activation), plus
  the input when the stride is 1 and the width is unchanged (decided from the table, a
  field ``residual``, never from the input's shape: pruning changes widths);
* ``last/{conv,bn}``: 1x1 convolution to ``make_divisible(1280 * max(1, width))``, BN,
  ReLU6; global average pooling; ``head``: the classifier (Dense with bias).

Widths: every channel count of torchvision's table times `width`, rounded to a multiple of
8 (`thinjax.models.examples.common.make_divisible`), as ``torchvision.models.MobileNetV2
(width_mult=width)``. ``MobileNetV2(num_classes=1000, stem_stride=2,
strides=IMAGENET_STRIDES)`` is torchvision's mobilenet_v2, 3,504,872 parameters. The
CIFAR default keeps 32x32 inputs at full resolution through the first two stages (stem
stride 1, second stage stride 1), as the usual CIFAR ports do. There is no dropout.
Every convolution but the depthwise ones is computed by `thinjax.ops.dense_conv`
(`thinjax.ops.conv.conv2d`: oneDNN where the commands enabled it, as for the ResNets).
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp

from thinjax.models.examples.common import conv_init, head_init, scaled
from thinjax.ops import dense_conv, depthwise

# torchvision's inverted-residual table: (expansion t, channels c, blocks n); the stride of
# each stage's first block is given separately (IMAGENET_STRIDES, CIFAR_STRIDES)
SETTINGS = ((1, 16, 1), (6, 24, 2), (6, 32, 3), (6, 64, 4), (6, 96, 3), (6, 160, 3),
            (6, 320, 1))
IMAGENET_STRIDES = (1, 2, 2, 2, 1, 2, 1)
CIFAR_STRIDES = (1, 1, 2, 2, 1, 2, 1)


class ConvBN(nn.Module):
    """``conv`` (bias-free, symmetric padding) then ``bn``, then ReLU6 if `act`, with
    nn.Conv's parameters: a depthwise ``conv`` (`groups` > 1) computed by
    `thinjax.ops.depthwise` (XLA:CPU's grouped convolution is several times slower), the
    others by `thinjax.ops.dense_conv` (oneDNN where the commands enabled it, as for the
    ResNets)."""
    features: int
    kernel: int = 1
    stride: int = 1
    groups: int = 1
    act: bool = True

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.Conv(self.features, (self.kernel, self.kernel), self.stride,
                    padding=self.kernel // 2, feature_group_count=self.groups,
                    use_bias=False, kernel_init=conv_init, name="conv",
                    conv_general_dilated=depthwise.conv_general_dilated if self.groups > 1
                    else dense_conv.conv_general_dilated)(x)
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                         name="bn")(x)
        return nn.relu6(x) if self.act else x


class InvertedResidual(nn.Module):
    """1x1 expansion (if `expansion` > 1), depthwise 3x3, linear 1x1 projection; the input
    is added if `residual` (torchvision: stride 1 and the width unchanged). A field, not
    ``x.shape[-1] == features``: a pruned stream is narrower than `features` says, and
    thinjax.trace rebuilds the layers' widths, not the model's decisions."""
    features: int
    expansion: int
    stride: int
    residual: bool = False

    @nn.compact
    def __call__(self, x, train: bool = False):
        hidden = x.shape[-1] * self.expansion
        y = x
        if self.expansion != 1:
            y = ConvBN(hidden, name="expand")(y, train)
        y = ConvBN(hidden, 3, self.stride, groups=hidden, name="dw")(y, train)
        y = ConvBN(self.features, act=False, name="project")(y, train)
        return x + y if self.residual else y


def block_table(width: float, strides: Sequence[int]) -> list[tuple[int, int, int]]:
    """(features, expansion, stride) of each of the 17 inverted residuals."""
    return [(scaled(c, width), t, s if i == 0 else 1)
            for (t, c, n), s in zip(SETTINGS, strides, strict=True) for i in range(n)]


def residuals(width: float, strides: Sequence[int]) -> list[bool]:
    """Whether each inverted residual adds its input: stride 1, width unchanged."""
    table = block_table(width, strides)
    widths = [scaled(32, width)] + [c for c, _, _ in table]
    return [s == 1 and widths[i] == c for i, (c, _, s) in enumerate(table)]


class MobileNetV2(nn.Module):
    """MobileNetV2 with width multiplier `width`; returns logits ``(N, num_classes)``
    for NHWC images."""
    num_classes: int = 10
    width: float = 1.0
    stem_stride: int = 1
    strides: tuple[int, ...] = CIFAR_STRIDES

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = ConvBN(scaled(32, self.width), 3, self.stem_stride, name="stem")(x, train)
        table = block_table(self.width, self.strides)
        for i, ((c, t, s), res) in enumerate(zip(table, residuals(self.width, self.strides),
                                                 strict=True)):
            x = InvertedResidual(c, t, s, res, name=f"block{i}")(x, train)
        x = ConvBN(scaled(1280 * max(1.0, self.width), 1.0), name="last")(x, train)
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(self.num_classes, kernel_init=head_init, name="head")(x)
