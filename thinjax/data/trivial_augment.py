"""TrivialAugmentWide in tf.data: torchvision's `TrivialAugmentWide(num_magnitude_bins,
NEAREST, fill)` applied to a PIL image, on a uint8 HWC RGB tensor. The colour ops
reproduce PIL's ImageEnhance/ImageOps arithmetic, the geometric ops PIL's nearest-neighbour
affine transforms (tests/test_augment.py and tests/test_preprocess.py check them against
PIL). `apply_op` applies one op, `trivial_augment_wide` a random one.

Per-pixel work keeps to TensorFlow's fast kernels (docs/performance.md, "ImageNet input
pipeline per core"): float32 elementwise ops, slices and concatenations; no tf.where
(SelectV2 broadcasts even equal shapes), few gathers, no uint8 arithmetic but masks, no
convolution (the commands run TensorFlow without its oneDNN kernels).
"""

from __future__ import annotations

import math

import numpy as np

from thinjax.data._random import below, uniforms
from thinjax.data._tf import tf

TA_WIDE_OPS = ("Identity", "ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate",
               "Brightness", "Color", "Contrast", "Sharpness", "Posterize", "Solarize",
               "AutoContrast", "Equalize")


def torch_linspace(start: float, stop: float, steps: int) -> np.ndarray:
    """`torch.linspace(start, stop, steps)` (float32), bit for bit, as PyTorch's vectorised
    CPU kernel (AVX2/AVX-512, the one x86-64 machines run) computes it: step =
    (stop - start) / (steps - 1) in float32, then `start + step * i` for the first half
    and `stop - step * (steps - 1 - i)` for the rest, each one fused multiply-add (one
    rounding). So bin 15 of `linspace(0, 32, 31)` is 15.999999, not 16. (PyTorch's
    non-vectorised fallback rounds the product first and gets 16.0 there.)"""
    s32, e32 = np.float32(start), np.float32(stop)
    if steps == 1:
        return np.array([s32], np.float32)
    step = np.float64(np.float32(np.float32(e32 - s32) / np.float32(steps - 1)))
    i = np.arange(steps)
    # float64 holds the float32 step times a small integer exactly: one rounding, as FMA.
    low = np.float64(s32) + step * i
    high = np.float64(e32) - step * (steps - 1 - i)
    return np.where(i < steps // 2, low, high).astype(np.float32)


def _magnitudes(num_bins: int) -> tuple[np.ndarray, np.ndarray]:
    """torchvision's TrivialAugmentWide._augmentation_space: a (len(TA_WIDE_OPS), num_bins)
    float32 table of magnitudes (0 for ops without one) and whether each op is signed.

    The linspaces are torch's float32 ones (`torch_linspace`), so that `int(magnitude)`
    gives torchvision's translations: bin 15 of 31 (15.999999) moves 15 pixels.
    """
    def lin(start: float, stop: float) -> np.ndarray:
        return torch_linspace(start, stop, num_bins)

    bits = 8 - np.round(np.arange(num_bins, dtype=np.float32)
                        / np.float32((num_bins - 1) / 6))
    none = np.zeros(num_bins)
    space = {  # op: (magnitudes, signed)
        "Identity": (none, False),
        "ShearX": (lin(0.0, 0.99), True),
        "ShearY": (lin(0.0, 0.99), True),
        "TranslateX": (lin(0.0, 32.0), True),
        "TranslateY": (lin(0.0, 32.0), True),
        "Rotate": (lin(0.0, 135.0), True),
        "Brightness": (lin(0.0, 0.99), True),
        "Color": (lin(0.0, 0.99), True),
        "Contrast": (lin(0.0, 0.99), True),
        "Sharpness": (lin(0.0, 0.99), True),
        "Posterize": (bits, False),
        "Solarize": (lin(255.0, 0.0), False),
        "AutoContrast": (none, False),
        "Equalize": (none, False),
    }
    table = np.stack([space[op][0] for op in TA_WIDE_OPS]).astype(np.float32)
    return table, np.array([space[op][1] for op in TA_WIDE_OPS])


def _sample_op(seed: tf.Tensor, num_bins: int = 31) -> tuple[tf.Tensor, tf.Tensor]:
    """(op index, signed magnitude) drawn as TrivialAugmentWide draws them: op and bin
    uniformly, then for signed ops a sign with probability 1/2 each."""
    table, signed = _magnitudes(num_bins)
    u = uniforms(seed, 3)
    op = below(u[0], len(TA_WIDE_OPS))
    magnitude = tf.gather(tf.constant(table.reshape(-1)), op * num_bins + below(u[1], num_bins))
    negate = tf.gather(tf.constant(signed), op) & (u[2] < 0.5)
    return op, tf.where(negate, -magnitude, magnitude)


def trivial_augment_wide(image: tf.Tensor, seed: tf.Tensor, num_bins: int = 31,
                         fill: float = 0) -> tf.Tensor:
    """uint8 HWC -> uint8 HWC: one op of `TA_WIDE_OPS`, with a random magnitude bin."""
    op, magnitude = _sample_op(seed, num_bins)
    return apply_op(image, op, magnitude, fill)


def apply_op(image: tf.Tensor, op_index: int | tf.Tensor, magnitude: float | tf.Tensor,
             fill: float = 0) -> tf.Tensor:
    """torchvision's autoaugment `_apply_op` for `TA_WIDE_OPS[op_index]` on a uint8 HWC
    RGB image, with `magnitude` already signed (ignored by ops without one)."""
    m = tf.cast(magnitude, tf.float32)
    pixels = tf.cast(m, tf.int32)  # torchvision: int(magnitude)
    ops = {
        "Identity": lambda: image,
        # Shears are about the top-left corner (torchvision passes center=[0, 0]).
        "ShearX": lambda: _affine(image, (1.0, m, 0.0, 0.0, 1.0, 0.0), fill),
        "ShearY": lambda: _affine(image, (1.0, 0.0, 0.0, m, 1.0, 0.0), fill),
        "TranslateX": lambda: _translate(image, pixels, 1, fill),
        "TranslateY": lambda: _translate(image, pixels, 0, fill),
        "Rotate": lambda: _rotate(image, m, fill),
        "Brightness": lambda: _blend(None, image, 1 + m),
        "Color": lambda: _blend(_grayscale(image), image, 1 + m),
        "Contrast": lambda: _blend(_mean_gray(image), image, 1 + m),
        "Sharpness": lambda: _blend(_smooth(image), image, 1 + m),
        "Posterize": lambda: _posterize(image, pixels),
        "Solarize": lambda: _solarize(image, m),
        "AutoContrast": lambda: _autocontrast(image),
        "Equalize": lambda: _equalize(image),
    }
    out = tf.switch_case(tf.convert_to_tensor(op_index, tf.int32),
                         [ops[name] for name in TA_WIDE_OPS])
    return tf.ensure_shape(out, image.shape)


def _select(cond: tf.Tensor, x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
    """tf.where(cond, x, y) for operands of one shape (or a scalar `cond`): TensorFlow's
    tf.where (SelectV2) broadcasts even equal shapes, at ~4x the cost of this v1 Select."""
    return tf.raw_ops.Select(condition=cond, x=x, y=y)


def _affine(image: tf.Tensor, matrix: tuple, fill: float) -> tf.Tensor:
    """Nearest-neighbour resampling where output point (x, y) reads input point
    (a x + b y + c, d x + e y + f) for matrix (a, b, c, d, e, f), in PIL's (and
    torchvision's) coordinates: pixel (i, j) spans [j, j+1] x [i, i+1]. Points outside the
    image read `fill`."""
    a, b, c, d, e, f = (tf.cast(v, tf.float64) for v in matrix)
    # TensorFlow puts pixel centres at integer coordinates: shift half a pixel both ways.
    transform = tf.stack([a, b, c + (a + b - 1) / 2, d, e, f + (d + e - 1) / 2, 0.0, 0.0])
    out = tf.raw_ops.ImageProjectiveTransformV3(
        images=image[None], transforms=tf.cast(transform, tf.float32)[None],
        output_shape=tf.shape(image)[:2],
        fill_value=tf.cast(fill, tf.float32), interpolation="NEAREST",
        fill_mode="CONSTANT")
    return out[0]


def _translate(image: tf.Tensor, shift: tf.Tensor, axis: int, fill: float) -> tf.Tensor:
    """`_affine`'s integer translation, out[j] = image[j - shift] along `axis` (`fill`
    outside), by slicing and concatenation."""
    n = tf.shape(image)[axis]
    k = tf.minimum(tf.abs(shift), n)
    before = tf.where(shift > 0, k, 0)
    begin, size, fills = [0, 0, 0], [-1, -1, -1], []
    begin[axis], size[axis] = k - before, n - k
    for length in (before, k - before):
        shape = tf.unstack(tf.shape(image))
        shape[axis] = length
        fills.append(tf.fill(tf.stack(shape), tf.cast(fill, image.dtype)))
    kept = tf.slice(image, tf.stack(begin), tf.stack(size))
    return tf.concat([fills[0], kept, fills[1]], axis)


def _rotate(image: tf.Tensor, degrees: tf.Tensor, fill: float) -> tf.Tensor:
    """Counter-clockwise rotation by `degrees` about the image centre, as PIL's
    Image.rotate and torchvision's F.rotate."""
    shape = tf.cast(tf.shape(image), tf.float64)
    cy, cx = shape[0] / 2, shape[1] / 2
    t = tf.cast(degrees, tf.float64) * (math.pi / 180)
    cos, sin = tf.cos(t), tf.sin(t)
    return _affine(image, (cos, -sin, cx - cos * cx + sin * cy,
                           sin, cos, cy - sin * cx - cos * cy), fill)


def _blend(degenerate: tf.Tensor | None, image: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
    """PIL's Image.blend(degenerate, image, factor), i.e. ImageEnhance's enhance(factor):
    float32 interpolation (or extrapolation), clipped to [0, 255], truncated to uint8.
    `degenerate`: float32 of the image's shape, a scalar, or None for black."""
    x = tf.cast(image, tf.float32)
    out = factor * x if degenerate is None else degenerate + factor * (x - degenerate)
    return tf.cast(tf.clip_by_value(out, 0.0, 255.0), tf.uint8)


def _luma(image: tf.Tensor) -> tf.Tensor:
    """PIL's convert("L") (ITU-R 601-2 luma in 16-bit fixed point) as float32 (H * W,).
    Exact: every sum is an integer below 2**24."""
    rgb = tf.reshape(tf.cast(image, tf.float32), [-1, 3])
    sums = rgb[:, 0] * 19595.0 + rgb[:, 1] * 38470.0 + rgb[:, 2] * 7471.0
    return tf.floor((sums + 0x8000) / 65536.0)


def _grayscale(image: tf.Tensor) -> tf.Tensor:
    """The luma of each pixel in each of its 3 channels: float32 of the image's shape (a
    matmul with a 3x3 matrix of luma weights, exact as `_luma`)."""
    weights = np.array([[19595], [38470], [7471]], np.float32).repeat(3, 1)
    rgb = tf.reshape(tf.cast(image, tf.float32), [-1, 3])
    luma = tf.floor((tf.linalg.matmul(rgb, tf.constant(weights)) + 0x8000) / 65536.0)
    return tf.reshape(luma, tf.shape(image))


def _mean_gray(image: tf.Tensor) -> tf.Tensor:
    """ImageEnhance.Contrast's degenerate: the grayscale image's mean, rounded."""
    mean = tf.reduce_mean(tf.cast(_luma(image), tf.float64))
    return tf.cast(tf.floor(mean + 0.5), tf.float32)


def _smooth(image: tf.Tensor) -> tf.Tensor:
    """PIL's ImageFilter.SMOOTH ([[1, 1, 1], [1, 5, 1], [1, 1, 1]] / 13, rounded) as
    float32, border pixels unchanged: the 3x3 sum plus 4 times the centre, exact integers,
    then / 13 (n / 13 lies at least 1/26 from a half: it rounds as PIL's float sum). Sums
    of slices, no convolution: the commands run TensorFlow without its oneDNN kernels,
    and its own depthwise convolution costs ~2 ms here."""
    shape = tf.shape(image)
    x = tf.reshape(tf.cast(image, tf.float32), tf.stack([shape[0], shape[1] * 3]))
    rows = x[:, :-6] + x[:, 3:-3] + x[:, 6:]  # 3 pixels wide, per channel
    box = rows[:-2] + rows[1:-1] + rows[2:]
    inner = tf.floor((box + 4.0 * x[1:-1, 3:-3]) / 13.0 + 0.5)
    middle = tf.concat([x[1:-1, :3], inner, x[1:-1, -3:]], axis=1)
    return tf.reshape(tf.concat([x[:1], middle, x[-1:]], axis=0), shape)


def _posterize(image: tf.Tensor, bits: tf.Tensor) -> tf.Tensor:
    """PIL's ImageOps.posterize: keep the `bits` most significant bits."""
    mask = 256 - tf.bitwise.left_shift(tf.constant(1), 8 - bits)
    return tf.bitwise.bitwise_and(image, tf.cast(mask, tf.uint8))


def _solarize(image: tf.Tensor, threshold: tf.Tensor) -> tf.Tensor:
    """PIL's ImageOps.solarize: values at or above `threshold` inverted."""
    x = tf.cast(image, tf.float32)
    return tf.cast(_select(x >= threshold, 255.0 - x, x), tf.uint8)


def _autocontrast(image: tf.Tensor) -> tf.Tensor:
    """PIL's ImageOps.autocontrast: per channel, v -> int(v * scale - lo * scale) with
    scale = 255 / (hi - lo) in float64, for the channel's min lo and max hi; a constant
    channel is unchanged (scale 1, offset 0). The scales and offsets tiled to the image's
    shape: a product with a broadcast operand costs twice as much."""
    lo = tf.cast(tf.reduce_min(image, axis=[0, 1]), tf.float64)
    hi = tf.cast(tf.reduce_max(image, axis=[0, 1]), tf.float64)
    spread = hi > lo
    scale = _select(spread, 255.0 / tf.maximum(hi - lo, 1.0), tf.ones_like(hi))
    lo = _select(spread, lo, tf.zeros_like(lo))
    x = tf.reshape(tf.cast(image, tf.float64), [-1, 3])
    pixels = tf.stack([tf.shape(x)[0], 1])
    out = x * tf.tile(scale[None], pixels) + tf.tile((-lo * scale)[None], pixels)
    return tf.reshape(tf.cast(tf.clip_by_value(out, 0.0, 255.0), tf.uint8), tf.shape(image))


def _equalize(image: tf.Tensor) -> tf.Tensor:
    """PIL's ImageOps.equalize, per channel: with step = (pixels not at the channel's
    maximum) // 255, value v -> (step // 2 + pixels below v) // step, capped at 255; a
    channel with step 0 is unchanged. One histogram and one table for all channels,
    indexed by value + 256 * channel."""
    flat = tf.reshape(tf.cast(image, tf.int32), [-1, 3]) + tf.range(0, 768, 256)
    hist = tf.reshape(tf.math.bincount(flat, minlength=768, maxlength=768), [3, 256])
    top = tf.gather(hist, tf.cast(tf.reduce_max(image, axis=[0, 1]), tf.int32), batch_dims=1)
    step = ((tf.reduce_sum(hist, axis=1) - top) // 255)[:, None]
    below = tf.cumsum(hist, axis=1, exclusive=True)
    lut = tf.minimum((step // 2 + below) // tf.maximum(step, 1), 255)
    lut = tf.cast(tf.where(step > 0, lut, tf.range(256)), tf.uint8)
    return tf.reshape(tf.gather(tf.reshape(lut, [-1]), flat), tf.shape(image))
