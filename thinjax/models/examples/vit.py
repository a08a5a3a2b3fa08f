"""A small Vision Transformer (Dosovitskiy et al., 2021) in Flax linen, with a width
multiplier that scales the number of attention heads at a fixed head size (DeiT's
Ti/S/B family: 3, 6, 12 heads of 64).

Layers (parameter paths under ``params``):

* ``patch``: the patch embedding, a convolution of kernel = stride = `patch` (with bias;
  `thinjax.ops.dense_conv`: oneDNN where the commands enabled it) to ``D = heads *
  head_dim`` channels, flattened to tokens; ``cls`` (``(1, 1, D)``) is
  prepended and ``pos`` (``(1, tokens + 1, D)``) added;
* ``block{j}`` for j < `depth`, pre-norm: ``norm1`` (LayerNorm), attention with explicit
  projections ``q``, ``k``, ``v`` (``nn.DenseGeneral`` D -> (heads, head_dim): kernel
  ``(D, H, head_dim)``, bias ``(H, head_dim)``) and ``out`` ((heads, head_dim) -> D: kernel
  ``(H, head_dim, D)``, bias ``(D,)``), so a head is one index of axis 1 of the q/k/v
  kernels and axis 0 of ``out``'s; the residual add; ``norm2``, the MLP ``fc1`` (Dense D ->
  `mlp_ratio` D), exact GELU, ``fc2``, the residual add;
* ``norm`` (LayerNorm) on the class token (or, with ``pool="mean"``, on the mean of the
  patch tokens, and then there is no ``cls``), ``head`` (Dense with bias).

The LayerNorms use epsilon 1e-6. Heads: ``max(1, round(heads * width))`` (Python's round,
half to even). With ``ViT(num_classes=1000, image=224, patch=16, depth=12, heads=12,
head_dim=64)`` it has torchvision's vit_b_16's 86,567,656 parameters (no dropout).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from thinjax.models.examples.common import dense_init
from thinjax.ops import dense_conv

EPS = 1e-6


class Attention(nn.Module):
    """Multi-head self-attention with DenseGeneral projections ``q, k, v, out``."""
    heads: int
    head_dim: int

    @nn.compact
    def __call__(self, x):
        proj = [nn.DenseGeneral((self.heads, self.head_dim), kernel_init=dense_init, name=n)(x)
                for n in ("q", "k", "v")]
        q, k, v = proj  # (N, T, H, hd)
        logits = jnp.einsum("nqhd,nkhd->nhqk", q, k) / jnp.sqrt(self.head_dim).astype(x.dtype)
        y = jnp.einsum("nhqk,nkhd->nqhd", jax.nn.softmax(logits, axis=-1), v)
        return nn.DenseGeneral(x.shape[-1], axis=(-2, -1), kernel_init=dense_init,
                               name="out")(y)


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x))."""
    heads: int
    head_dim: int
    mlp_dim: int

    @nn.compact
    def __call__(self, x):
        x = x + Attention(self.heads, self.head_dim, name="attn")(
            nn.LayerNorm(epsilon=EPS, name="norm1")(x))
        y = nn.LayerNorm(epsilon=EPS, name="norm2")(x)
        y = nn.gelu(nn.Dense(self.mlp_dim, kernel_init=dense_init, name="fc1")(y),
                    approximate=False)
        return x + nn.Dense(x.shape[-1], kernel_init=dense_init, name="fc2")(y)


class ViT(nn.Module):
    """ViT with width multiplier `width` (on the heads); returns ``(N, num_classes)``."""
    num_classes: int = 10
    width: float = 1.0
    image: int = 32
    patch: int = 4
    depth: int = 4
    heads: int = 4
    head_dim: int = 32
    mlp_ratio: int = 4
    pool: str = "cls"

    @nn.compact
    def __call__(self, x, train: bool = False):
        del train  # no dropout: one function
        heads = max(1, round(self.heads * self.width))
        dim = heads * self.head_dim
        x = nn.Conv(dim, (self.patch, self.patch), self.patch, padding=0,
                    kernel_init=dense_init, name="patch",
                    conv_general_dilated=dense_conv.conv_general_dilated)(x)
        # the tokens' width from the patch embedding's output, not `dim`: pruning the
        # residual stream (thinjax.trace, inexact=True) narrows it
        x = x.reshape(x.shape[0], -1, x.shape[-1])
        if self.pool == "cls":
            cls = self.param("cls", nn.initializers.zeros, (1, 1, x.shape[-1]))
            x = jnp.concatenate([jnp.broadcast_to(cls, (x.shape[0], 1, x.shape[-1])), x],
                                axis=1)
        x = x + self.param("pos", dense_init, (1, x.shape[1], x.shape[-1]))
        for j in range(self.depth):
            x = Block(heads, self.head_dim, self.mlp_ratio * dim, name=f"block{j}")(x)
        x = x[:, 0] if self.pool == "cls" else jnp.mean(x, axis=1)
        x = nn.LayerNorm(epsilon=EPS, name="norm")(x)
        return nn.Dense(self.num_classes, kernel_init=dense_init, name="head")(x)
