"""thinjax: width-scaled ResNets (ThinResNets) and structured channel pruning in JAX/Flax."""

import os as _os

# TensorFlow is only the input pipeline here: keep its C++ logging quiet by default.
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"
