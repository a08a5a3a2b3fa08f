"""Any thinjax plan as a TensorFlow function, for TFLite export.

``tf_forward(plan, variables)`` rebuilds the inference forward pass with plain ``tf.nn``
ops and the weights as constants: Flax's NHWC activations and HWIO kernels are
TensorFlow's own layouts, so nothing is transposed. BatchNorm is folded into the
preceding convolution (``w * scale / sqrt(var + eps)``, ``bias - mean * scale / sqrt(var +
eps)``), as TFLite would do anyway. Padding is PyTorch's symmetric padding: ``SAME`` where
that is symmetric (stride 1, odd kernels), otherwise an explicit pad then ``VALID``;
the ImageNet stem's max-pool pads with zeros, which on post-ReLU (non-negative) inputs
equals padding with -inf. A removed block is the identity (ReLU of a non-negative input).

TensorFlow is imported here, so import this module only when exporting.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from thinjax.errors import require
from thinjax.plan import Plan

tf = require("tensorflow", "train", "TFLite export")


def fold_bn(kernel: np.ndarray, bn_params: Mapping, bn_stats: Mapping,
            eps: float = 1e-5) -> tuple[np.ndarray, np.ndarray]:
    """(kernel, bias) of conv + inference BatchNorm as one convolution (HWIO kernel)."""
    s = np.asarray(bn_params["scale"], np.float64) / np.sqrt(
        np.asarray(bn_stats["var"], np.float64) + eps)
    k = np.asarray(kernel, np.float64) * s
    b = np.asarray(bn_params["bias"], np.float64) - np.asarray(bn_stats["mean"], np.float64) * s
    return k.astype(np.float32), b.astype(np.float32)


def _conv_bn(x: Any, params: Mapping, stats: Mapping, conv: str, bn: str, stride: int,
             eps: float) -> Any:
    w, b = fold_bn(params[conv]["kernel"], params[bn], stats[bn], eps)
    pad = (w.shape[0] - 1) // 2
    if pad and stride != 1:
        x = tf.pad(x, [[0, 0], [pad, pad], [pad, pad], [0, 0]])
        mode = "VALID"
    else:
        mode = "SAME" if pad else "VALID"
    return tf.nn.bias_add(tf.nn.conv2d(x, tf.constant(w), stride, mode), tf.constant(b))


def _block(plan: Plan, x: Any, params: Mapping, stats: Mapping, inner: tuple[int, ...],
           stride: int, proj: bool, eps: float) -> Any:
    shortcut = _conv_bn(x, params["proj"], stats["proj"], "conv", "bn", stride, eps) \
        if proj else x
    if all(c == 0 for c in inner):  # branch removed: the identity
        return tf.nn.relu(shortcut)
    n = len(inner) + 1
    strided = 1 if plan.block == "basic" else 2  # which conv carries the stride (v1.5)
    y = x
    for i in range(1, n + 1):
        y = _conv_bn(y, params, stats, f"conv{i}", f"bn{i}", stride if i == strided else 1, eps)
        if i < n:
            y = tf.nn.relu(y)
    return tf.nn.relu(y + shortcut)


def tf_forward(plan: Plan, variables: Mapping, batch_size: int | None = None,
               input_size: int = 32, eps: float = 1e-5) -> Callable:
    """A ``tf.function`` mapping NHWC float32 images to float32 logits (batch dimension
    ``batch_size``, or any when None)."""
    params, stats = variables["params"], variables["batch_stats"]
    spec = tf.TensorSpec((batch_size, input_size, input_size, plan.in_channels), tf.float32,
                         name="images")
    head_w = tf.constant(np.asarray(params["head"]["kernel"], np.float32))
    head_b = tf.constant(np.asarray(params["head"]["bias"], np.float32))

    @tf.function(input_signature=[spec])
    def forward(x):
        stride = 2 if plan.stem == "imagenet" else 1
        y = tf.nn.relu(_conv_bn(x, params["stem"], stats["stem"], "conv", "bn", stride, eps))
        if plan.stem == "imagenet":
            y = tf.nn.max_pool2d(tf.pad(y, [[0, 0], [1, 1], [1, 1], [0, 0]]), 3, 2, "VALID")
        for name, _, _, s, b in plan.blocks():
            stage, block = name.split("/")
            p = params[stage].get(block, {})
            st = stats[stage].get(block, {})
            y = _block(plan, y, p, st, b.inner, s, b.proj, eps)
        y = tf.reduce_mean(y, axis=[1, 2])
        return tf.nn.bias_add(tf.matmul(y, head_w), head_b)

    return forward
