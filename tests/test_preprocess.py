"""The fast paths of the training input (thinjax.data.preprocess, augment) compute what
TensorFlow's plain ops, and PIL for TrivialAugmentWide, compute, bit for bit, on real
ImageNet JPEGs."""

import glob
import io
import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image, ImageEnhance, ImageOps

from thinjax import pixels
from thinjax.data import augment, preprocess


@pytest.fixture(scope="module")
def imagenet_jpegs(imagenet_sample) -> list[bytes]:
    """Twelve JPEGs of the sample: landscape, portrait, and the greyscale ones first."""
    files = sorted(glob.glob(os.path.join(imagenet_sample, "val", "*", "*.JPEG")))
    data = [open(f, "rb").read() for f in files]
    grey = [d for d in data if tf.io.decode_jpeg(d).shape[2] == 1][:3]
    return grey + data[::100][:9]


def windows(shape, rng, n):
    """n random (top, left, h, w) windows of an image `shape`, the whole image and a
    one-pixel-wide column among them."""
    height, width = shape[:2]
    out = [(0, 0, height, width), (0, width - 1, height, 1)]
    for _ in range(n):
        h, w = rng.integers(1, height + 1), rng.integers(1, width + 1)
        out.append((rng.integers(0, height - h + 1), rng.integers(0, width - w + 1), h, w))
    return out


def test_resize_bilinear_is_tf_image_resize_bit_for_bit(imagenet_jpegs):
    rng = np.random.default_rng(0)
    sizes = [(176, 176), (224, 300), (300, 224), (17, 5)]
    compared = 0
    for jpeg in imagenet_jpegs:
        image = tf.io.decode_jpeg(jpeg, channels=3)
        for top, left, h, w in windows(image.shape, rng, 4):
            crop = image[top:top + h, left:left + w]
            for size in sizes + [(h, w)]:  # down, up, non-square, to its own size
                ref = tf.image.resize(crop, size, method="bilinear", antialias=True).numpy()
                out = preprocess.resize_bilinear(crop, *size).numpy()
                np.testing.assert_array_equal(out, ref)
                mirrored = preprocess.resize_bilinear(crop, *size, tf.constant(True))
                np.testing.assert_array_equal(mirrored.numpy(), ref[:, ::-1])
                compared += 1
    # Float input (the evaluation path resizes float32 images) and its static shape.
    crop = tf.cast(tf.io.decode_jpeg(imagenet_jpegs[-1], channels=3), tf.float32)
    ref = tf.image.resize(crop, (232, 309), method="bilinear", antialias=True)
    out = preprocess.resize_bilinear(crop, 232, 309)
    np.testing.assert_array_equal(out.numpy(), ref.numpy())
    assert out.shape == (232, 309, 3) and compared == 12 * 6 * 5


def test_normalize_with_a_static_or_unknown_shape_is_the_broadcast_formula():
    image = np.random.default_rng(1).integers(0, 256, (176, 176, 3)).astype(np.uint8)
    ref = (image.astype(np.float32) / np.float32(255) - np.array(pixels.MEAN, np.float32)) \
        / np.array(pixels.STD, np.float32)
    shapes = []

    def normalize(x):
        shapes.append(x.shape.as_list())
        return preprocess.normalize(x)

    # In tf.data, as the pipelines run it, with the shape known and unknown.
    for shape in ([176, 176, 3], [None, None, 3]):
        ds = tf.data.Dataset.from_generator(lambda: [image], output_signature=tf.TensorSpec(
            shape, tf.uint8)).map(normalize)
        np.testing.assert_array_equal(next(iter(ds)).numpy(), ref)
    np.testing.assert_array_equal(preprocess.normalize(tf.constant(image)).numpy(), ref)
    assert shapes == [[176, 176, 3], [None, None, 3]]


def reference_random_resized_crop(jpeg: bytes, size: int, seed: tf.Tensor):
    """The transform written with TensorFlow's plain ops: full decode, augment's window
    for the seed, crop, resize, mirrored by the seed's 23rd uniform number; and the image
    unflipped."""
    image = tf.io.decode_jpeg(jpeg, channels=3, dct_method="INTEGER_ACCURATE")
    top, left, h, w = augment.rrc_window(image.shape[0], image.shape[1], seed).numpy()
    image = tf.image.resize(image[top:top + h, left:left + w], (size, size),
                            method="bilinear", antialias=True).numpy()
    mirror = tf.random.stateless_uniform([23], seed, dtype=tf.float64)[22] < 0.5
    return (image[:, ::-1] if mirror else image), image


def test_random_resized_crop_is_the_plain_ops_transform_bit_for_bit(imagenet_jpegs):
    mirrored = []
    for i, jpeg in enumerate(imagenet_jpegs):
        for j in range(4):
            seed = tf.constant([i, j], tf.int64)
            out = augment.random_resized_crop(tf.constant(jpeg), 176, seed).numpy()
            ref, unflipped = reference_random_resized_crop(jpeg, 176, seed)
            np.testing.assert_array_equal(out, ref)
            mirrored.append(not np.array_equal(out, unflipped))
    assert 0.25 < np.mean(mirrored) < 0.75  # 48 draws of a fair coin


# TrivialAugmentWide's ops against PIL on ImageNet-sized crops (tests/test_augment.py
# checks them on CIFAR's 32x32): the matmul luma, the convolution smoothing, the
# per-channel matmuls of AutoContrast, the sliced translations, the one-table Equalize.
ENHANCE = [-0.99, -0.33, 0.5, 0.99]
PIL_OPS = {
    "Brightness": (lambda im, m: ImageEnhance.Brightness(im).enhance(1 + m), ENHANCE),
    "Color": (lambda im, m: ImageEnhance.Color(im).enhance(1 + m), ENHANCE),
    "Contrast": (lambda im, m: ImageEnhance.Contrast(im).enhance(1 + m), ENHANCE),
    "Sharpness": (lambda im, m: ImageEnhance.Sharpness(im).enhance(1 + m), ENHANCE),
    "Posterize": (lambda im, m: ImageOps.posterize(im, int(m)), [2.0, 5.0]),
    "Solarize": (ImageOps.solarize, [246.5, 127.5, 8.5]),
    "AutoContrast": (lambda im, m: ImageOps.autocontrast(im), [0.0]),
    "Equalize": (lambda im, m: ImageOps.equalize(im), [0.0]),
    "TranslateX": (lambda im, m: im.transform(im.size, Image.AFFINE, (1, 0, -int(m), 0, 1, 0),
                                              Image.NEAREST, fillcolor=(0, 0, 0)), [-31.0, 7.9]),
    "TranslateY": (lambda im, m: im.transform(im.size, Image.AFFINE, (1, 0, 0, 0, 1, -int(m)),
                                              Image.NEAREST, fillcolor=(0, 0, 0)), [-7.9, 31.0]),
}


def test_trivial_augment_ops_match_pil_on_imagenet_crops(imagenet_jpegs):
    crops = [Image.open(io.BytesIO(j)).convert("RGB").resize((176, 160), Image.BILINEAR)
             for j in imagenet_jpegs[:6]]
    crops.append(Image.fromarray(np.asarray(crops[0]) // 4 + 60))  # low contrast
    flat = np.asarray(crops[1]).copy()
    flat[..., 1] = 200
    crops.append(Image.fromarray(flat))  # one constant channel
    for name, (pil_op, magnitudes) in PIL_OPS.items():
        for im in crops:
            for m in magnitudes:
                ref = np.asarray(pil_op(im, np.float32(m))).astype(int)
                out = augment.apply_op(tf.constant(np.asarray(im)),
                                       augment.TA_WIDE_OPS.index(name), m).numpy()
                diff = np.abs(out.astype(int) - ref)
                # As test_augment's: exact on x86-64, one level on 1% for FMA elsewhere.
                assert diff.max() <= 1 and (diff > 0).mean() <= 0.01, (name, m, diff.max())
