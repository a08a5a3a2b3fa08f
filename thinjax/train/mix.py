"""Batch-level mixing on device (JAX): mixup and cutmix, as torchvision's references.

Per batch, `mix` picks one of the enabled methods at random (mixup with alpha
`mixup_alpha`, cutmix with alpha `cutmix_alpha`), pairs each example with its neighbour
(the batch rolled by one, as torchvision does) and mixes images and one-hot targets with
lam ~ Beta(alpha, alpha) (cutmix: lam corrected to the pasted box's true area).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _mixup(rng, images, targets, alpha):
    lam = jax.random.beta(rng, alpha, alpha)
    mixed = lam * images + (1 - lam) * jnp.roll(images, 1, axis=0)
    return mixed, lam * targets + (1 - lam) * jnp.roll(targets, 1, axis=0)


def _cutmix(rng, images, targets, alpha):
    r_lam, r_y, r_x = jax.random.split(rng, 3)
    lam = jax.random.beta(r_lam, alpha, alpha)
    h, w = images.shape[1], images.shape[2]
    cy = jax.random.randint(r_y, (), 0, h)
    cx = jax.random.randint(r_x, (), 0, w)
    ratio = jnp.sqrt(1.0 - lam)
    rh, rw = (ratio * h / 2).astype(jnp.int32), (ratio * w / 2).astype(jnp.int32)
    y0, y1 = jnp.clip(cy - rh, 0, h), jnp.clip(cy + rh, 0, h)
    x0, x1 = jnp.clip(cx - rw, 0, w), jnp.clip(cx + rw, 0, w)
    ys, xs = jnp.arange(h)[:, None], jnp.arange(w)[None, :]
    box = ((ys >= y0) & (ys < y1) & (xs >= x0) & (xs < x1))[None, :, :, None]
    mixed = jnp.where(box, jnp.roll(images, 1, axis=0), images)
    lam = 1.0 - (y1 - y0) * (x1 - x0) / (h * w)
    return mixed, lam * targets + (1 - lam) * jnp.roll(targets, 1, axis=0)


def mix(rng, images, targets, mixup_alpha: float = 0.0, cutmix_alpha: float = 0.0):
    """(images, soft targets) after mixup or cutmix, chosen with equal probability among
    those whose alpha > 0; unchanged if neither is enabled."""
    methods = []
    if mixup_alpha > 0:
        methods.append(lambda r: _mixup(r, images, targets, mixup_alpha))
    if cutmix_alpha > 0:
        methods.append(lambda r: _cutmix(r, images, targets, cutmix_alpha))
    if not methods:
        return images, targets
    r_choice, r_mix = jax.random.split(rng)
    if len(methods) == 1:
        return methods[0](r_mix)
    return jax.lax.switch(jax.random.randint(r_choice, (), 0, len(methods)), methods, r_mix)
