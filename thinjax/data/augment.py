"""Per-example training augmentations in tf.data, mirroring torchvision's transforms.

Every function takes an explicit `seed` (a shape-[2] int32/int64 tensor) and uses only
stateless random ops (one draw of all its numbers, `_uniforms`): an example's augmentation
depends on its seed alone, whatever the tf.data parallelism or element order. All of them
work eagerly and inside `tf.data.Dataset.map`. Per-pixel work avoids TensorFlow's slow
paths (broadcasting binary ops and tf.where, gathers, uint8 arithmetic, column resampling):
docs/performance.md, "ImageNet input pipeline per core".

- `random_crop_flip`: `RandomCrop(size, padding=pad)` (zero padding), then
  `RandomHorizontalFlip(0.5)`.
- `random_resized_crop`: `RandomResizedCrop(size, scale, ratio)` (bilinear, antialias),
  then `RandomHorizontalFlip(0.5)`, from encoded bytes. The window (`rrc_window`) is
  drawn by torchvision's algorithm (`RandomResizedCrop.get_params`: ten candidates, the
  first that fits, uniform offsets over every position, the central fallback), so its
  distribution is torchvision's; the random numbers themselves are TensorFlow's stateless
  ones. JPEGs decode only the window (pixels as a full decode's).
- `trivial_augment_wide`: `TrivialAugmentWide(num_magnitude_bins, NEAREST, fill)` applied
  to a PIL image: the colour ops reproduce PIL's ImageEnhance/ImageOps arithmetic, the
  geometric ops PIL's nearest-neighbour affine transforms. `apply_op` applies one op.
- `random_erasing`: `RandomErasing(p, scale, ratio, value)` on a normalised float image.
"""

from __future__ import annotations

import math

import numpy as np

from thinjax.data import preprocess
from thinjax.data._tf import tf

TA_WIDE_OPS = ("Identity", "ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate",
               "Brightness", "Color", "Contrast", "Sharpness", "Posterize", "Solarize",
               "AutoContrast", "Equalize")


def random_crop_flip(image: tf.Tensor, seed: tf.Tensor, pad: int = 4) -> tf.Tensor:
    """A random window, the size of `image`, of `image` zero-padded by `pad` on each side,
    mirrored left-right with probability 1/2."""
    crop_seed, flip_seed = tf.unstack(tf.random.split(seed, 2))
    padded = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]])
    crop = tf.image.stateless_random_crop(padded, tf.shape(image), crop_seed)
    return tf.ensure_shape(tf.image.stateless_random_flip_left_right(crop, flip_seed),
                           image.shape)


def _uniforms(seed: tf.Tensor, n: int) -> tf.Tensor:
    """n float64 numbers uniform in [0, 1) from one stateless draw: every random number of
    an augmentation comes from one op (each TensorFlow op costs microseconds per image)."""
    return tf.random.stateless_uniform([n], seed, dtype=tf.float64)


def _below(u: tf.Tensor, n: tf.Tensor) -> tf.Tensor:
    """An integer uniform in [0, n) from `u` uniform in [0, 1): int32 floor(u * n)."""
    n = tf.cast(n, tf.int32)
    return tf.minimum(tf.cast(tf.floor(u * tf.cast(n, tf.float64)), tf.int32), n - 1)


def _between(u: tf.Tensor, lo: float, hi: float) -> tf.Tensor:
    return lo + (hi - lo) * u


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
    return _rrc_window(height, width, _uniforms(seed, 22), scale, ratio)


def _rrc_window(height: tf.Tensor, width: tf.Tensor, u: tf.Tensor,
                scale: tuple[float, float], ratio: tuple[float, float]) -> tf.Tensor:
    """`rrc_window` from 22 uniform numbers: areas, aspects, top, left."""
    u_area, u_aspect, u_top, u_left = tf.split(u[:22], [10, 10, 1, 1])
    height, width = tf.cast(height, tf.int32), tf.cast(width, tf.int32)
    h_f, w_f = tf.cast(height, tf.float64), tf.cast(width, tf.float64)
    areas = h_f * w_f * _between(u_area, *scale)
    aspects = tf.exp(_between(u_aspect, math.log(ratio[0]), math.log(ratio[1])))
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
    top = tf.where(found, _below(u_top[0], height - h + 1), (height - h) // 2)
    left = tf.where(found, _below(u_left[0], width - w + 1), (width - w) // 2)
    return tf.stack([top, left, h, w])


def random_resized_crop(image_bytes: tf.Tensor, size: int, seed: tf.Tensor,
                        scale: tuple[float, float] = (0.08, 1.0),
                        ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> tf.Tensor:
    """Encoded JPEG/PNG -> float32 (size, size, 3) in [0, 255]: the `rrc_window` of the
    image (torchvision's RandomResizedCrop window), resized (bilinear, antialias),
    randomly mirrored left-right. JPEGs decode only the window (other formats twice:
    once for their size)."""
    u = _uniforms(seed, 23)
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
    u = _uniforms(seed, 3)
    op = _below(u[0], len(TA_WIDE_OPS))
    magnitude = tf.gather(tf.constant(table.reshape(-1)), op * num_bins + _below(u[1], num_bins))
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


# Costs below: TensorFlow's tf.where (SelectV2) broadcasts even operands of one shape,
# block by block, at ~4x the cost of the v1 Select used here; its gather and uint8
# arithmetic are slow too, so the per-pixel work is float32 elementwise ops and matmuls.

def _select(cond: tf.Tensor, x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
    """tf.where(cond, x, y) for operands of one shape (or a scalar `cond`)."""
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


def _luma(image: tf.Tensor, copies: int) -> tf.Tensor:
    """PIL's convert("L") (ITU-R 601-2 luma in 16-bit fixed point) as float32, `copies`
    times per pixel: (H * W, copies). Exact: every sum of the dot product is an integer
    below 2**24."""
    weights = np.array([[19595], [38470], [7471]], np.float32).repeat(copies, 1)
    rgb = tf.reshape(tf.cast(image, tf.float32), [-1, 3])
    return tf.floor((tf.linalg.matmul(rgb, tf.constant(weights)) + 0x8000) / 65536.0)


def _grayscale(image: tf.Tensor) -> tf.Tensor:
    """The luma of each pixel in each of its 3 channels: float32 of the image's shape."""
    return tf.reshape(_luma(image, 3), tf.shape(image))


def _mean_gray(image: tf.Tensor) -> tf.Tensor:
    """ImageEnhance.Contrast's degenerate: the grayscale image's mean, rounded."""
    mean = tf.reduce_mean(tf.cast(_luma(image, 1), tf.float64))
    return tf.cast(tf.floor(mean + 0.5), tf.float32)


def _smooth(image: tf.Tensor) -> tf.Tensor:
    """PIL's ImageFilter.SMOOTH ([[1, 1, 1], [1, 5, 1], [1, 1, 1]] / 13, rounded) as
    float32, border pixels unchanged. Any order of summation rounds alike: n / 13 lies
    at least 1/26 from a half for every integer n, float32 errors are below 1e-4."""
    x = tf.cast(image, tf.float32)
    k = np.array([[1, 1, 1], [1, 5, 1], [1, 1, 1]], np.float32) / np.float32(13)
    kernel = tf.constant(np.repeat(k[:, :, None, None], 3, axis=2))  # per channel
    inner = tf.nn.depthwise_conv2d(x[None], kernel, [1, 1, 1, 1], "VALID")[0]
    inner = tf.floor(tf.clip_by_value(inner, 0.0, 255.0) + 0.5)
    rows = tf.concat([x[1:-1, :1], inner, x[1:-1, -1:]], axis=1)
    return tf.concat([x[:1], rows, x[-1:]], axis=0)


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
    channel is unchanged (scale 1, offset 0). Per-channel products by a diagonal matmul:
    exact, its other terms are zeros."""
    lo = tf.cast(tf.reduce_min(image, axis=[0, 1]), tf.float64)
    hi = tf.cast(tf.reduce_max(image, axis=[0, 1]), tf.float64)
    spread = hi > lo
    scale = _select(spread, 255.0 / tf.maximum(hi - lo, 1.0), tf.ones_like(hi))
    lo = _select(spread, lo, tf.zeros_like(lo))
    x = tf.reshape(tf.cast(image, tf.float64), [-1, 3])
    offset = tf.linalg.matmul(tf.ones_like(x[:, :1]), (-lo * scale)[None])
    out = tf.linalg.matmul(x, tf.linalg.diag(scale)) + offset
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


def random_erasing(image: tf.Tensor, seed: tf.Tensor, p: float = 0.1,
                   scale: tuple[float, float] = (0.02, 0.33),
                   ratio: tuple[float, float] = (0.3, 3.3), value: float = 0.0) -> tf.Tensor:
    """With probability `p`, set to `value` a rectangle with area fraction uniform in
    `scale` and aspect ratio (height / width) log-uniform in `ratio`: the first of 10
    candidates that fits strictly inside the image, nothing if none does."""
    u = _uniforms(seed, 23)
    u_area, u_ratio = u[1:11], u[11:21]
    height, width = tf.shape(image)[0], tf.shape(image)[1]
    areas = tf.cast(height * width, tf.float64) * _between(u_area, *scale)
    aspects = tf.exp(_between(u_ratio, math.log(ratio[0]), math.log(ratio[1])))
    hs = tf.cast(tf.round(tf.sqrt(areas * aspects)), tf.int32)
    ws = tf.cast(tf.round(tf.sqrt(areas / aspects)), tf.int32)
    fits = (hs < height) & (ws < width)
    first = tf.argmax(tf.cast(fits, tf.int32))
    h, w = hs[first], ws[first]
    # Positions are drawn even when nothing fits (then nothing is erased).
    top = _below(u[21], tf.maximum(height - h, 0) + 1)
    left = _below(u[22], tf.maximum(width - w, 0) + 1)
    erase = (u[0] < p) & tf.reduce_any(fits)

    def erased() -> tf.Tensor:  # slices and concatenations: copies, no per-pixel select
        rows = image[top:top + h]
        box = tf.fill(tf.stack([h, w, tf.shape(image)[2]]), tf.cast(value, image.dtype))
        middle = tf.concat([rows[:, :left], box, rows[:, left + w:]], axis=1)
        return tf.concat([image[:top], middle, image[top + h:]], axis=0)

    return tf.ensure_shape(tf.cond(erase, erased, lambda: image), image.shape)
