"""Input pipelines (tf.data): dataset sources (TFDS names, image folders, the bundled
sample), preprocessing, augmentations, and batches for evaluation and training.

Importing this package loads TensorFlow; JAX-only code (the model, the train step, mixup
and cutmix in `thinjax.train.mix`) does not import it."""
from thinjax.data.pipeline import EvalBatches, eval_batches, train_batches
from thinjax.data.sources import DataError, Source, get_source, sample_dir

__all__ = ["DataError", "EvalBatches", "Source", "eval_batches", "get_source", "sample_dir",
           "train_batches"]
