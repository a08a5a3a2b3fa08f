"""thinjax's commands: the process edge.

Every command module imports this package first. Importing it prepares the process for a
command, before TensorFlow or JAX load: TensorFlow's C++ log level (``TF_CPP_MIN_LOG_LEVEL``,
2 unless set), TensorFlow's own oneDNN ops off (``TF_ENABLE_ONEDNN_OPTS``, 0 unless set: its
lines on loading, "oneDNN custom operations are on" and absl's "All log messages before
absl::InitializeLog()", twice each, print whatever the log level; tf.data's batches are
bitwise the same either way, and JAX's convolutions are thinjax's own oneDNN), the CPU
tuning (`thinjax.cpu.enable`: malloc settings and oneDNN's convolutions, each with its
``THINJAX_*`` opt-out) and JAX's persistent compilation cache in the thinjax cache
(``jax-compile/<machine>/``: a second run of a command skips compiling what the first
compiled; ``THINJAX_NO_COMPILATION_CACHE=1`` turns it off, a ``JAX_COMPILATION_CACHE_DIR``
of your own is kept, as is a ``JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS``: programs that
compile in less, 0.2 s unless set, are compiled again on every run). Library modules never
import it.

`import_tensorflow` is for the commands that read data: TensorFlow for tf.data, without the
Keras that TensorFlow imports eagerly (see there).
"""

import os
import sys

from thinjax import cache, cpu

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
SETTINGS = cpu.enable()


def compilation_cache() -> str | None:
    """Turns JAX's persistent compilation cache on (see the module docstring); its folder,
    or None when it is off."""
    if os.environ.get("THINJAX_NO_COMPILATION_CACHE"):
        return None
    import jax  # after the environment defaults above (importing JAX sets TF's log level)
    if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return os.environ["JAX_COMPILATION_CACHE_DIR"]
    path = cache.compilation_dir(cpu.machine_id())
    jax.config.update("jax_compilation_cache_dir", path)
    if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:  # JAX's own: 1 s
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)
    return path


COMPILATION_CACHE = compilation_cache()

# TensorFlow >= 2.16 ends its import with `import keras.src.optimizers` (to register Keras's
# optimizers for SavedModels), which loads all of Keras 3 and matplotlib: a quarter of
# TensorFlow's import (0.7 of 3.1 CPU-s, benchmarks/startup.py). No command uses Keras.
_KERAS_EAGER = "keras.src.optimizers"


def import_tensorflow():
    """Imports TensorFlow (for tf.data) without its eager import of Keras: the name is
    kept from `sys.modules` while TensorFlow loads, so TensorFlow skips it as it skips a
    missing Keras, and importable again afterwards (a later ``import keras`` works and
    registers its optimizers then). The module, or None where TensorFlow is not
    installed (thinjax.data then says which extra to install)."""
    if "tensorflow" in sys.modules or _KERAS_EAGER in sys.modules:
        return sys.modules.get("tensorflow")
    sys.modules[_KERAS_EAGER] = None  # type: ignore[assignment]  # "not importable"
    try:
        import tensorflow  # heavy: only for the commands that read data, when they run
    except ImportError:
        return None
    finally:
        del sys.modules[_KERAS_EAGER]
    return tensorflow

