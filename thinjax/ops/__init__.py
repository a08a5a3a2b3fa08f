"""Compute kernels thinjax adds to XLA: `thinjax.ops.conv.conv2d` (oneDNN on XLA:CPU) and,
for inference, `thinjax.ops.infer.conv2d_fused` (convolution, bias, residual and ReLU as one
oneDNN primitive)."""
