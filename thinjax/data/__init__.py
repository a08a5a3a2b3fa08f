"""Input pipelines: dataset sources (TFDS names, image folders, the bundled sample),
preprocessing, and batches for evaluation and training.

Names load lazily, so that importing `thinjax.data.mix` (pure JAX) needs no TensorFlow."""
import importlib

_WHERE = {"DataError": "sources", "Source": "sources", "get_source": "sources",
          "sample_dir": "sources", "eval_batches": "pipeline"}
__all__ = sorted(_WHERE)


def __getattr__(name):
    if name in _WHERE:
        return getattr(importlib.import_module(f"thinjax.data.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'thinjax.data' has no attribute {name!r}")
