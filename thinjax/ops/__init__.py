"""Compute kernels thinjax adds to XLA: `thinjax.ops.conv.conv2d` (oneDNN on XLA:CPU)."""
