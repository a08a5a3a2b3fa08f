"""thinjax's commands: the process edge.

Every command module imports this package first. Importing it prepares the process for a
command, before TensorFlow or JAX load: TensorFlow's C++ log level (``TF_CPP_MIN_LOG_LEVEL``,
2 unless set) and the CPU tuning (`thinjax.cpu.enable`: malloc settings and oneDNN's
convolutions, each with its ``THINJAX_*`` opt-out). Library modules never import it.
"""

import os

from thinjax import cpu

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
SETTINGS = cpu.enable()
