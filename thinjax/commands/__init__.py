"""thinjax's commands: the process edge.

Every command module imports this package first. Importing it prepares the process for a
command, before TensorFlow or JAX load: TensorFlow's C++ log level (``TF_CPP_MIN_LOG_LEVEL``,
2 unless set), TensorFlow's own oneDNN ops off (``TF_ENABLE_ONEDNN_OPTS``, 0 unless set: its
lines on loading, "oneDNN custom operations are on" and absl's "All log messages before
absl::InitializeLog()", twice each, print whatever the log level; tf.data's batches are
bitwise the same either way, and JAX's convolutions are thinjax's own oneDNN), and the CPU
tuning (`thinjax.cpu.enable`: malloc settings and oneDNN's convolutions, each with its
``THINJAX_*`` opt-out). Library modules never import it.
"""

import os

from thinjax import cpu

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
SETTINGS = cpu.enable()
