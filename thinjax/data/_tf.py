"""TensorFlow for tf.data only, set up once for every data module."""
import tensorflow as tf

# tf.data runs on the host: never let TensorFlow take accelerator memory from JAX.
tf.config.set_visible_devices([], "GPU")


def graph_fn(fn):
    """`fn` for tf.data's map, traced as written: no AutoGraph rewrite of its Python (the
    data functions branch only on Python values; the rewrite took ~9 s per training run)."""
    return tf.autograph.experimental.do_not_convert(fn)


__all__ = ["tf", "graph_fn"]
