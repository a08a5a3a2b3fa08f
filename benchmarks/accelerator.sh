#!/usr/bin/env bash
# The accelerator benchmark (about 8 minutes on one H100 or H200): prints one table of
# ResNet-50 / ThinResNet-18 training images/s, dense vs pruned evaluation images/s and the
# fraction of a measured bf16 matmul peak. Arguments go to benchmarks/accelerator.py
# (--smoke: tiny sizes, a CPU check; --json=FILE: the rows as JSON).
set -euo pipefail
cd "$(dirname "$0")/.."
export XLA_PYTHON_CLIENT_PREALLOCATE="${XLA_PYTHON_CLIENT_PREALLOCATE:-true}"
exec "${PYTHON:-python3}" benchmarks/accelerator.py "$@"
