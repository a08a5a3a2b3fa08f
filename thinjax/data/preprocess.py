"""Per-example preprocessing in tf.data: decode, crop/resize, scale, normalise."""

from __future__ import annotations

from thinjax.data._tf import tf

# The release (and torchvision) normalise with ImageNet statistics, CIFAR included.
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def decode(image_bytes: tf.Tensor) -> tf.Tensor:
    """Encoded JPEG/PNG -> uint8 HWC RGB.

    JPEGs use the accurate integer IDCT, as PIL and torchvision do, so that checkpoints
    score here what they score in PyTorch.
    """
    img = tf.cond(
        tf.io.is_jpeg(image_bytes),
        lambda: tf.io.decode_jpeg(image_bytes, channels=3, dct_method="INTEGER_ACCURATE"),
        lambda: tf.io.decode_image(image_bytes, channels=3, expand_animations=False))
    img.set_shape([None, None, 3])
    return img


def normalize(image: tf.Tensor) -> tf.Tensor:
    """uint8 or [0, 255] float -> float32 normalised with the ImageNet mean and std."""
    x = tf.cast(image, tf.float32) / 255.0
    return (x - tf.constant(MEAN)) / tf.constant(STD)


def resize_center_crop(image: tf.Tensor, resize: int, crop: int) -> tf.Tensor:
    """torchvision Resize(resize) (shorter side, bilinear, antialias) + CenterCrop(crop)."""
    shape = tf.shape(image)
    h, w = tf.cast(shape[0], tf.float32), tf.cast(shape[1], tf.float32)
    scale = resize / tf.minimum(h, w)
    nh = tf.cast(tf.round(h * scale), tf.int32)
    nw = tf.cast(tf.round(w * scale), tf.int32)
    image = tf.image.resize(image, (nh, nw), method="bilinear", antialias=True)
    top = (nh - crop) // 2
    left = (nw - crop) // 2
    return image[top:top + crop, left:left + crop, :]


def eval_image(image_bytes: tf.Tensor, size: int | None = None,
               resize: int | None = None) -> tf.Tensor:
    """Evaluation view: decode, optionally resize shorter side + centre crop, normalise."""
    img = decode(image_bytes)
    if resize:
        img = resize_center_crop(img, resize, size)
    elif size:
        img = tf.image.resize_with_crop_or_pad(img, size, size)
    return normalize(img)
