"""A ConvNeXt (Liu et al., 2022) in Flax linen: ConvNeXt-T's blocks with a width
multiplier, small and CIFAR-sized by default.

Layers (parameter paths under ``params``; the network has no ``batch_stats``):

* ``stem/{conv,norm}``: a patchify convolution (kernel = stride = `patch`, with bias) and
  a LayerNorm over channels;
* ``stage{s}`` for s = 0..3: for s > 0 a downsampling ``down_norm`` (LayerNorm) and
  ``down`` (2x2 convolution of stride 2, with bias), then ``block{j}`` for
  j < ``depths[s]``: a depthwise 7x7 convolution ``dwconv`` (with bias; kernel
  ``(7, 7, 1, C)``; shifted multiply-adds, `thinjax.ops.depthwise`), LayerNorm ``norm``,
  the channels-last MLP ``fc1`` (Dense C -> 4C),
  exact GELU, ``fc2`` (Dense 4C -> C), the layer scale ``gamma`` (a ``(C,)`` parameter,
  initialised to 1e-6) and the residual add;
* global average pooling, ``head_norm`` (LayerNorm), ``head`` (Dense with bias).

The stem and downsampling convolutions are computed by `thinjax.ops.dense_conv`
(oneDNN where the commands enabled it). Every LayerNorm normalises the channel axis
(NHWC's last) with epsilon 1e-6. Widths:
``dims`` times `width`, rounded to multiples of 8 (`make_divisible`). With
``ConvNeXt(num_classes=1000, depths=(3, 3, 9, 3), patch=4)`` it is torchvision's
convnext_tiny, 28,589,128 parameters. There is no stochastic depth nor dropout, so train
and eval compute the same function.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from thinjax.models.examples.common import dense_init, scaled
from thinjax.ops import dense_conv, depthwise

EPS = 1e-6


def gelu(x):
    """The exact (erf) GELU, PyTorch's default (Flax's default is the tanh approximation)."""
    return nn.gelu(x, approximate=False)


class Block(nn.Module):
    """ConvNeXt block: dwconv 7x7, LayerNorm, Dense 4x, GELU, Dense, layer scale, + input."""
    layer_scale: float = 1e-6

    @nn.compact
    def __call__(self, x):
        c = x.shape[-1]
        y = nn.Conv(c, (7, 7), padding=3, feature_group_count=c, kernel_init=dense_init,
                    conv_general_dilated=depthwise.conv_general_dilated, name="dwconv")(x)
        y = nn.LayerNorm(epsilon=EPS, name="norm")(y)
        y = gelu(nn.Dense(4 * c, kernel_init=dense_init, name="fc1")(y))
        y = nn.Dense(c, kernel_init=dense_init, name="fc2")(y)
        gamma = self.param("gamma", nn.initializers.constant(self.layer_scale), (c,))
        return x + gamma * y


class Stem(nn.Module):
    """``conv`` (kernel = stride = `patch`, with bias), then LayerNorm ``norm``."""
    features: int
    patch: int

    @nn.compact
    def __call__(self, x):
        x = nn.Conv(self.features, (self.patch, self.patch), self.patch, padding=0,
                    kernel_init=dense_init, name="conv",
                    conv_general_dilated=dense_conv.conv_general_dilated)(x)
        return nn.LayerNorm(epsilon=EPS, name="norm")(x)


class Stage(nn.Module):
    """LayerNorm ``down_norm`` and 2x2 stride-2 conv ``down`` if `downsample`; `depth`
    blocks ``block{j}``."""
    features: int
    depth: int
    downsample: bool

    @nn.compact
    def __call__(self, x):
        if self.downsample:
            x = nn.LayerNorm(epsilon=EPS, name="down_norm")(x)
            x = nn.Conv(self.features, (2, 2), 2, padding=0, kernel_init=dense_init,
                        name="down", conv_general_dilated=dense_conv.conv_general_dilated)(x)
        for j in range(self.depth):
            x = Block(name=f"block{j}")(x)
        return x


class ConvNeXt(nn.Module):
    """ConvNeXt with width multiplier `width`; returns logits ``(N, num_classes)``."""
    num_classes: int = 10
    width: float = 1.0
    depths: tuple[int, ...] = (1, 1, 1, 1)
    dims: tuple[int, ...] = (96, 192, 384, 768)
    patch: int = 2

    @nn.compact
    def __call__(self, x, train: bool = False):
        del train  # no BatchNorm, dropout or stochastic depth: one function
        dims = [scaled(d, self.width) for d in self.dims]
        x = Stem(dims[0], self.patch, name="stem")(x)
        for s, (depth, dim) in enumerate(zip(self.depths, dims, strict=True)):
            x = Stage(dim, depth, s > 0, name=f"stage{s}")(x)
        x = nn.LayerNorm(epsilon=EPS, name="head_norm")(jnp.mean(x, axis=(1, 2)))
        return nn.Dense(self.num_classes, kernel_init=dense_init, name="head")(x)
