"""TensorFlow for tf.data only, set up once for every data module."""
import logging

from thinjax.errors import require

# training and evaluation input: the `train` extra
tf = require("tensorflow", "train", "thinjax.data (training and evaluation input)")
log = logging.getLogger(__name__)
_HOST_ONLY: list[bool] = []


def host_only() -> None:
    """tf.data runs on the host: TensorFlow is kept from the GPUs (and their memory, which
    JAX needs) the first time a data source is made, not when thinjax is imported."""
    if _HOST_ONLY:
        return
    _HOST_ONLY.append(True)
    try:
        tf.config.set_visible_devices([], "GPU")
    except RuntimeError as e:  # TensorFlow already set up its devices in this process
        log.warning("thinjax: TensorFlow's GPUs stay visible (%s); tf.data may take GPU "
                    "memory", e)


def graph_fn(fn):
    """`fn` for tf.data's map, traced as written: no AutoGraph rewrite of its Python (the
    data functions branch only on Python values; the rewrite took ~9 s per training run)."""
    return tf.autograph.experimental.do_not_convert(fn)


__all__ = ["graph_fn", "host_only", "tf"]
