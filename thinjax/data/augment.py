"""Per-example training augmentations in tf.data, mirroring torchvision's transforms.

Every function takes an explicit `seed` (a shape-[2] int32/int64 tensor) and uses only
stateless random ops (one draw of all its numbers, `_random.uniforms`): an example's
augmentation depends on its seed alone, whatever the tf.data parallelism or element
order. All of them work eagerly and inside `tf.data.Dataset.map`. Per-pixel work avoids
TensorFlow's slow paths (broadcasting binary ops and tf.where, gathers, uint8 arithmetic,
column resampling): docs/performance.md, "ImageNet input pipeline per core".

- `random_crop_flip`: `RandomCrop(size, padding=pad)` (zero padding), then
  `RandomHorizontalFlip(0.5)`.
- `random_resized_crop`: `RandomResizedCrop(size, scale, ratio)` (bilinear, antialias),
  then `RandomHorizontalFlip(0.5)`, from encoded bytes. The window (`rrc_window`) is
  drawn by torchvision's algorithm (`RandomResizedCrop.get_params`: ten candidates, the
  first that fits, uniform offsets over every position, the central fallback), so its
  distribution is torchvision's; the random numbers themselves are TensorFlow's stateless
  ones. JPEGs decode only the window (pixels as a full decode's).
- `trivial_augment_wide`: `TrivialAugmentWide(num_magnitude_bins, NEAREST, fill)` applied
  to a PIL image (`thinjax.data.trivial_augment`, with `apply_op`; here too).
- `random_erasing`: `RandomErasing(p, scale, ratio, value)` on a normalised float image.
"""

from __future__ import annotations

import math

from thinjax.data import preprocess
from thinjax.data._random import below, between, uniforms
from thinjax.data._tf import tf
from thinjax.data.trivial_augment import TA_WIDE_OPS, apply_op, trivial_augment_wide

__all__ = ["TA_WIDE_OPS", "apply_op", "random_crop_flip", "random_erasing",
           "random_resized_crop", "rrc_window", "trivial_augment_wide"]


def random_crop_flip(image: tf.Tensor, seed: tf.Tensor, pad: int = 4) -> tf.Tensor:
    """A random window, the size of `image`, of `image` zero-padded by `pad` on each side,
    mirrored left-right with probability 1/2."""
    crop_seed, flip_seed = tf.unstack(tf.random.split(seed, 2))
    padded = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]])
    crop = tf.image.stateless_random_crop(padded, tf.shape(image), crop_seed)
    return tf.ensure_shape(tf.image.stateless_random_flip_left_right(crop, flip_seed),
                           image.shape)


def rrc_window(height: tf.Tensor, width: tf.Tensor, seed: tf.Tensor,
               scale: tuple[float, float] = (0.08, 1.0),
               ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> tf.Tensor:
    """torchvision's `RandomResizedCrop.get_params` for a `height` x `width` image, stateless:
    int32 [top, left, h, w].

    Ten candidates, each with area fraction uniform in `scale` and aspect ratio (width /
    height) log-uniform in `ratio`, w = round(sqrt(area * aspect)), h = round(sqrt(area /
    aspect)) (halves to even, as Python's round); the first with 0 < w <= width and
    0 < h <= height is placed uniformly over every position, edges included. If none
    fits, the central crop of torchvision's fallback: the whole image with its aspect
    ratio clamped into `ratio`.
    """
    return _rrc_window(height, width, uniforms(seed, 22), scale, ratio)


def _rrc_window(height: tf.Tensor, width: tf.Tensor, u: tf.Tensor,
                scale: tuple[float, float], ratio: tuple[float, float]) -> tf.Tensor:
    """`rrc_window` from 22 uniform numbers: areas, aspects, top, left."""
    u_area, u_aspect, u_top, u_left = tf.split(u[:22], [10, 10, 1, 1])
    height, width = tf.cast(height, tf.int32), tf.cast(width, tf.int32)
    h_f, w_f = tf.cast(height, tf.float64), tf.cast(width, tf.float64)
    areas = h_f * w_f * between(u_area, *scale)
    aspects = tf.exp(between(u_aspect, math.log(ratio[0]), math.log(ratio[1])))
    ws = tf.cast(tf.round(tf.sqrt(areas * aspects)), tf.int32)
    hs = tf.cast(tf.round(tf.sqrt(areas / aspects)), tf.int32)
    fits = (ws > 0) & (ws <= width) & (hs > 0) & (hs <= height)
    first = tf.argmax(tf.cast(fits, tf.int32), output_type=tf.int32)
    lo, hi = min(ratio), max(ratio)
    in_ratio = w_f / h_f
    fb_w = tf.where(in_ratio > hi, tf.cast(tf.round(h_f * hi), tf.int32), width)
    fb_h = tf.where(in_ratio < lo, tf.cast(tf.round(w_f / lo), tf.int32), height)
    found = tf.reduce_any(fits)
    h = tf.where(found, hs[first], fb_h)
    w = tf.where(found, ws[first], fb_w)
    # torch.randint(0, height - h + 1): every position, the last row and column included.
    top = tf.where(found, below(u_top[0], height - h + 1), (height - h) // 2)
    left = tf.where(found, below(u_left[0], width - w + 1), (width - w) // 2)
    return tf.stack([top, left, h, w])


def random_resized_crop(image_bytes: tf.Tensor, size: int, seed: tf.Tensor,
                        scale: tuple[float, float] = (0.08, 1.0),
                        ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> tf.Tensor:
    """Encoded JPEG/PNG -> float32 (size, size, 3) in [0, 255]: the `rrc_window` of the
    image (torchvision's RandomResizedCrop window), resized (bilinear, antialias),
    randomly mirrored left-right. JPEGs decode only the window (other formats twice:
    once for their size)."""
    u = uniforms(seed, 23)
    is_jpeg = tf.io.is_jpeg(image_bytes)

    def decode() -> tf.Tensor:
        return tf.io.decode_image(image_bytes, channels=3, expand_animations=False)

    shape = tf.cond(is_jpeg, lambda: tf.image.extract_jpeg_shape(image_bytes, tf.int32),
                    lambda: tf.shape(decode(), tf.int32))
    top, left, h, w = tf.unstack(_rrc_window(shape[0], shape[1], u, scale, ratio))

    def jpeg() -> tf.Tensor:
        # Decode one more column each side and drop it: libjpeg's chroma upsampling at a
        # window's left/right edge lacks the neighbouring samples, so those columns
        # would differ from a full decode's (by tens of grey levels on CIFAR).
        pad_l = tf.minimum(left, 1)
        pad_r = tf.minimum(shape[1] - left - w, 1)
        crop = tf.image.decode_and_crop_jpeg(
            image_bytes, tf.stack([top, left - pad_l, h, w + pad_l + pad_r]),
            channels=3, dct_method="INTEGER_ACCURATE")
        return crop[:, pad_l:pad_l + w]

    image = tf.cond(is_jpeg, jpeg, lambda: decode()[top:top + h, left:left + w])
    image.set_shape([None, None, 3])
    return preprocess.resize_bilinear(image, size, size, mirror=u[22] < 0.5)


def random_erasing(image: tf.Tensor, seed: tf.Tensor, p: float = 0.1,
                   scale: tuple[float, float] = (0.02, 0.33),
                   ratio: tuple[float, float] = (0.3, 3.3), value: float = 0.0) -> tf.Tensor:
    """With probability `p`, set to `value` a rectangle with area fraction uniform in
    `scale` and aspect ratio (height / width) log-uniform in `ratio`: the first of 10
    candidates that fits strictly inside the image, nothing if none does."""
    u = uniforms(seed, 23)
    u_area, u_ratio = u[1:11], u[11:21]
    height, width = tf.shape(image)[0], tf.shape(image)[1]
    areas = tf.cast(height * width, tf.float64) * between(u_area, *scale)
    aspects = tf.exp(between(u_ratio, math.log(ratio[0]), math.log(ratio[1])))
    hs = tf.cast(tf.round(tf.sqrt(areas * aspects)), tf.int32)
    ws = tf.cast(tf.round(tf.sqrt(areas / aspects)), tf.int32)
    fits = (hs < height) & (ws < width)
    first = tf.argmax(tf.cast(fits, tf.int32))
    h, w = hs[first], ws[first]
    # Positions are drawn even when nothing fits (then nothing is erased).
    top = below(u[21], tf.maximum(height - h, 0) + 1)
    left = below(u[22], tf.maximum(width - w, 0) + 1)
    erase = (u[0] < p) & tf.reduce_any(fits)

    def erased() -> tf.Tensor:  # slices and concatenations: copies, no per-pixel select
        rows = image[top:top + h]
        box = tf.fill(tf.stack([h, w, tf.shape(image)[2]]), tf.cast(value, image.dtype))
        middle = tf.concat([rows[:, :left], box, rows[:, left + w:]], axis=1)
        return tf.concat([image[:top], middle, image[top + h:]], axis=0)

    return tf.ensure_shape(tf.cond(erase, erased, lambda: image), image.shape)
