"""thinjax: width-scaled ResNets (ThinResNets) and structured channel pruning in JAX/Flax."""

import os as _os

# TensorFlow is only the input pipeline here: keep its C++ logging quiet by default.
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# XLA:CPU's fast paths (YNNPACK fusions), appended to XLA_FLAGS before JAX starts a backend
# when THINJAX_CPU_FLAGS=1 (off by default: not faster than the default path); see
# thinjax/platform.py and docs/performance.md.
from thinjax import platform as _platform  # noqa: E402

_platform.apply_cpu_defaults()

# XLA:CPU frees and re-maps each step's temporary buffer; glibc settings that keep it mapped
# (page faults cost a small CPU training step 20-27% of its time): thinjax/allocator.py.
from thinjax import allocator as _allocator  # noqa: E402

_allocator.tune_malloc()

__version__ = "0.1.0"
