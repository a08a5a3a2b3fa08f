"""Batches for the model: every evaluation example exactly once (padded, with a mask)."""

from __future__ import annotations

from typing import Iterator

import numpy as np
import tensorflow as tf

from thinjax.data import preprocess
from thinjax.data.sources import DataError, Source


def find_undecodable(files: list[str]) -> str | None:
    """The first of `files` that TensorFlow cannot decode as an image, or None."""
    for f in files:
        try:
            preprocess.decode(tf.io.read_file(f))
        except (tf.errors.InvalidArgumentError, tf.errors.NotFoundError):
            return f
    return None


def reraise_bad_file(source: Source, split: str, err: Exception):
    bad = find_undecodable(source.files(split)) if source.files else None
    if bad:
        raise DataError(f"{bad}: not a decodable image ({str(err).splitlines()[0]}); remove "
                        "or replace the file") from err
    raise err


def eval_batches(source: Source, split: str, batch_size: int, image_size: int | None = None,
                 resize: int | None = None, process_index: int = 0,
                 process_count: int = 1) -> Iterator[dict[str, np.ndarray]]:
    """Fixed-shape batches {image, label, mask} covering this process's shard once.

    The last batch is padded with zeros and mask=False; summing over `mask` counts every
    example exactly once.
    """
    ds = source.as_dataset(split)
    if process_count > 1:
        ds = ds.shard(process_count, process_index)
    size = image_size or source.image_size
    ds = ds.map(lambda ex: {"image": preprocess.eval_image(ex["image"], size, resize),
                            "label": tf.cast(ex["label"], tf.int32)},
                num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.batch(batch_size, drop_remainder=False).prefetch(tf.data.AUTOTUNE)
    it = iter(ds.as_numpy_iterator())
    while True:
        try:
            b = next(it)
        except StopIteration:
            return
        except tf.errors.InvalidArgumentError as e:
            reraise_bad_file(source, split, e)
        n = len(b["label"])
        mask = np.arange(batch_size) < n
        if n < batch_size:
            pad = batch_size - n
            b = {k: np.concatenate([v, np.zeros((pad,) + v.shape[1:], v.dtype)])
                 for k, v in b.items()}
        b["mask"] = mask
        yield b
