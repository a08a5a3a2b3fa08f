"""Batches for the model: every evaluation example exactly once (padded, with a mask)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from thinjax.data import augment, preprocess
from thinjax.data._tf import graph_fn, tf
from thinjax.data.sources import DataError, Source
from thinjax.errors import ConfigError


def find_undecodable(files: list[str]) -> str | None:
    """The first of `files` that TensorFlow cannot decode as an image, or None."""
    for f in files:
        try:
            preprocess.decode(tf.io.read_file(f))
        except (tf.errors.InvalidArgumentError, tf.errors.NotFoundError):
            return f
    return None


def reraise_bad_file(source: Source, split: str, err: Exception):
    files = source.split_files(split)
    bad = find_undecodable(files) if files else None
    if bad:
        raise DataError(f"{bad}: not a decodable image ({str(err).splitlines()[0]}); remove "
                        "or replace the file") from err
    raise err


class EvalBatches:
    """Fixed-shape batches {image, label, mask} covering this process's shard once per
    iteration; re-iterable. The last batch is padded with zeros and mask=False: summing
    over `mask` counts every example exactly once. With `cache`, the preprocessed
    examples stay in memory after the first pass (for small evaluation sets).
    `normalized=False`: the images before normalising (`preprocess.eval_image`)."""

    def __init__(self, source: Source, split: str, batch_size: int,
                 image_size: int | None = None, resize: int | None = None,
                 process_index: int = 0, process_count: int = 1, cache: bool = False,
                 normalized: bool = True):
        self.source, self.split, self.batch_size = source, split, batch_size
        ds = source.as_dataset(split)
        if process_count > 1:
            ds = ds.shard(process_count, process_index)
        size = image_size or source.image_size
        ds = ds.map(graph_fn(lambda ex: {
            "image": preprocess.eval_image(ex["image"], size, resize, normalized),
            "label": tf.cast(ex["label"], tf.int32)}),
            num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        if cache:
            ds = ds.cache()
        self._ds = ds.batch(batch_size, drop_remainder=False).prefetch(tf.data.AUTOTUNE)

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        it = iter(self._ds.as_numpy_iterator())
        while True:
            try:
                b = next(it)
            except StopIteration:
                return
            except tf.errors.InvalidArgumentError as e:
                reraise_bad_file(self.source, self.split, e)
            n = len(b["label"])
            if n < self.batch_size:
                pad = self.batch_size - n
                b = {k: np.concatenate([v, np.zeros((pad,) + v.shape[1:], v.dtype)])
                     for k, v in b.items()}
            b["mask"] = np.arange(self.batch_size) < n
            yield b


def eval_batches(source: Source, split: str, batch_size: int, image_size: int | None = None,
                 resize: int | None = None, process_index: int = 0,
                 process_count: int = 1) -> Iterator[dict[str, np.ndarray]]:
    """One pass of `EvalBatches` (see there)."""
    return iter(EvalBatches(source, split, batch_size, image_size, resize, process_index,
                            process_count))


def _train_example_fn(cfg_data, seed: int, shard: int):
    """(index, example) -> {image, label}: augmented with a per-example stateless seed."""

    def fn(index, ex):
        key = tf.stack([tf.constant(seed * 1_000_003 + shard, tf.int64), tf.cast(index, tf.int64)])
        s = tf.random.experimental.stateless_split(key, 3)
        if cfg_data.augment == "imagenet":
            img = augment.random_resized_crop(ex["image"], cfg_data.image_size, s[0],
                                              scale=(cfg_data.rrc_scale_min, 1.0))
            img = tf.cast(tf.clip_by_value(tf.round(img), 0, 255), tf.uint8)
        else:
            img = ex["image"] if ex["image"].dtype == tf.uint8 else preprocess.decode(ex["image"])
            img = tf.image.resize_with_crop_or_pad(img, cfg_data.image_size, cfg_data.image_size)
            img = augment.random_crop_flip(img, s[0], pad=cfg_data.crop_padding)
        if cfg_data.trivial_augment:
            img = augment.trivial_augment_wide(img, s[1])
        img = preprocess.normalize(img)
        if cfg_data.random_erasing > 0:
            img = augment.random_erasing(img, s[2], p=cfg_data.random_erasing)
        return {"image": img, "label": tf.cast(ex["label"], tf.int32)}

    return fn


def _base(source: Source, cfg_data, shard: int, num_shards: int) -> tf.data.Dataset:
    """This shard's examples, decoded and cached, or encoded (cached or not) per `cache`."""
    base = source.as_dataset(cfg_data.train_split).shard(num_shards, shard)
    if cfg_data.cache == "decoded" and cfg_data.augment != "imagenet":
        return base.map(graph_fn(lambda ex: {"image": preprocess.decode(ex["image"]),
                                             "label": ex["label"]}),
                        num_parallel_calls=tf.data.AUTOTUNE).cache()
    base = base.map(graph_fn(lambda ex: {"image": ex["image"], "label": ex["label"]}))
    return base.cache() if cfg_data.cache == "encoded" else base


def pipeline_options() -> tf.data.Options:
    """Deterministic order; each map call runs its ops on one thread: the parallelism is
    across examples (the parallel map), and hand-offs to TF's intra-op pool inside one call
    cost more than they gain (docs/performance.md, "ImageNet input pipeline per core")."""
    options = tf.data.Options()
    options.deterministic = True
    options.threading.max_intra_op_parallelism = 1
    return options


def _shard_batches(source: Source, cfg_data, shard: int, num_shards: int, batch: int,
                   seed: int, start_step: int, steps_per_epoch: int):
    split = cfg_data.train_split
    base = _base(source, cfg_data, shard, num_shards)
    n_shard = source.num_examples(split) // num_shards
    epoch, offset = divmod(start_step, steps_per_epoch)

    def epoch_examples(e):  # epoch e: a shuffle seeded by (seed, e), example indices e * N + i
        ds = base.shuffle(min(cfg_data.shuffle_buffer, n_shard), seed=seed * 100_003 + e,
                          reshuffle_each_iteration=False)
        return ds.take(steps_per_epoch * batch).enumerate(start=e * n_shard)

    # one dataset over all epochs, so that the parallel map and the prefetch run on across
    # epoch boundaries (rebuilt per epoch, each epoch started with an empty pipeline)
    later = tf.data.Dataset.range(epoch + 1, 2**62).flat_map(epoch_examples)
    ds = epoch_examples(tf.constant(epoch, tf.int64)).skip(offset * batch).concatenate(later)
    ds = ds.map(graph_fn(_train_example_fn(cfg_data, seed, shard)),
                num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.batch(batch, drop_remainder=True).prefetch(4).with_options(pipeline_options())
    it = ds.as_numpy_iterator()
    while True:
        try:
            yield next(it)
        except tf.errors.InvalidArgumentError as e:
            reraise_bad_file(source, split, e)


def train_batches(source: Source, cfg_data, global_batch: int, seed: int, start_step: int,
                  steps_per_epoch: int, num_shards: int = 1, process_index: int = 0,
                  process_count: int = 1) -> Iterator[dict[str, np.ndarray]]:
    """Endless, reproducible training batches for this process, from `start_step`.

    The training set is split into `num_shards` shards (a multiple of the process count);
    each process reads only its own shards. A global batch is the concatenation of one
    batch of global_batch / num_shards examples from every shard, in shard order. Epoch e
    visits a shard in the order of a shuffle seeded by (seed, e), and example i of a shard
    is augmented with the stateless seed (seed, shard, e * N + i). So the stream is a pure
    function of (seed, num_shards, step), whatever the number of processes: a resumed run
    sees exactly the batches it would have seen, and 1 process reading 2 shards builds the
    same global batches as 2 processes reading one shard each.
    """
    if num_shards % process_count or global_batch % num_shards:
        raise ConfigError(f"data shards ({num_shards}) must be a multiple of the process count "
                         f"({process_count}) and divide the global batch ({global_batch})")
    per = num_shards // process_count
    streams = [_shard_batches(source, cfg_data, s, num_shards, global_batch // num_shards, seed,
                              start_step, steps_per_epoch)
               for s in range(process_index * per, (process_index + 1) * per)]
    for parts in zip(*streams):
        yield {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
