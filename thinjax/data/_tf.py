"""TensorFlow for tf.data only: imported by the data modules (not by `thinjax.data`
itself, so JAX-only code such as `thinjax.data.mix` runs where TensorFlow is absent)."""
import tensorflow as tf

# tf.data runs on the host: never let TensorFlow take accelerator memory from JAX.
tf.config.set_visible_devices([], "GPU")

__all__ = ["tf"]
