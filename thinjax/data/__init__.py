"""Input pipelines: dataset sources (TFDS names, image folders, the bundled sample),
preprocessing, and batches for evaluation and training."""
import tensorflow as _tf

# tf.data runs on the host: never let TensorFlow take accelerator memory from JAX.
_tf.config.set_visible_devices([], "GPU")

from thinjax.data.sources import DataError, Source, get_source, sample_dir
from thinjax.data.pipeline import eval_batches

__all__ = ["DataError", "Source", "get_source", "sample_dir", "eval_batches"]
