"""Depthwise convolutions as shifted multiply-adds, fast on XLA:CPU.

XLA:CPU runs a grouped convolution with one channel per group (``feature_group_count`` =
channels) as a slow generic loop: a 3x3 depthwise layer of 96 channels at 32x32, batch
128, took seconds per step on a 2-core EPYC. `depthwise_conv` computes the same function
as k*k strided slices of the once-padded input, each times its per-channel tap, summed;
XLA fuses that into elementwise loops, and its autodiff is slices, pads and reductions.

`conv_general_dilated` has ``lax.conv_general_dilated``'s signature, so that
``nn.Conv(C, (k, k), feature_group_count=C, conv_general_dilated=conv_general_dilated)``
keeps nn.Conv's parameters (``kernel`` ``(k, k, 1, C)``, ``bias``) and class; any other
convolution (not depthwise, not NHWC x HWIO, input dilation) goes to lax unchanged.

The shifted sum is a ``jax.jit`` named `NAME`: thinjax.trace reads a call of that name as
the depthwise convolution it stands for (same channel groups, same MACs).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

NAME = "thinjax_depthwise_conv"
NHWC_HWIO = ((0, 3, 1, 2), (3, 2, 0, 1), (0, 3, 1, 2))
Padding = str | Sequence[tuple[int, int]]


def layout(dimension_numbers: Any, ndim: int) -> tuple:
    dn = lax.conv_dimension_numbers((1,) * ndim, (1,) * ndim, dimension_numbers)
    return (tuple(dn.lhs_spec), tuple(dn.rhs_spec), tuple(dn.out_spec))


def pad_pairs(padding: Padding, shape: tuple[int, ...], window: tuple[int, ...],
           strides: tuple[int, ...]) -> tuple[tuple[int, int], ...]:
    if isinstance(padding, str):
        return tuple(lax.padtype_to_pads(shape, window, strides, padding))
    return tuple((int(lo), int(hi)) for lo, hi in padding)


def _shifted(x: jax.Array, w: jax.Array, strides: tuple[int, int],
             pads: tuple[tuple[int, int], ...], dilation: tuple[int, int]) -> jax.Array:
    """NHWC `x` times HW1C `w`, depthwise: the sum over taps (i, j) of the padded input
    shifted by (i, j) * dilation, strided, times tap (i, j)'s channel weights, summed in
    float32 at least (bfloat16 inputs: one rounding at the end, as a convolution's)."""
    kh, kw = w.shape[:2]
    acc = jnp.promote_types(x.dtype, jnp.float32)
    xp = jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
    n, h, wd, c = xp.shape
    (sh, sw), (dh, dw) = strides, dilation
    ho, wo = (h - (kh - 1) * dh - 1) // sh + 1, (wd - (kw - 1) * dw - 1) // sw + 1
    out = None
    for i in range(kh):
        for j in range(kw):
            r0, c0 = i * dh, j * dw
            tap = lax.slice(xp, (0, r0, c0, 0),
                            (n, r0 + (ho - 1) * sh + 1, c0 + (wo - 1) * sw + 1, c),
                            (1, sh, sw, 1))
            term = tap.astype(acc) * w[i, j, 0].astype(acc)
            out = term if out is None else out + term
    return out.astype(jnp.result_type(x, w))


def depthwise_conv(x: jax.Array, kernel: jax.Array, strides: Sequence[int] = (1, 1),
                   padding: Padding = "SAME", dilation: Sequence[int] = (1, 1)) -> jax.Array:
    """Depthwise 2-d convolution of NHWC `x` with an HW1C `kernel` (``(kh, kw, 1, C)``,
    nn.Conv's layout with ``feature_group_count=C``), `padding` "SAME", "VALID" or
    ((top, bottom), (left, right))."""
    s, d = tuple(int(v) for v in strides), tuple(int(v) for v in dilation)
    window = tuple((k - 1) * r + 1 for k, r in zip(kernel.shape[:2], d))
    pads = pad_pairs(padding, x.shape[1:3], window, s)
    return named(x, kernel, s, pads, d)


def _named_impl(x: jax.Array, kernel: jax.Array, strides: tuple[int, int],
                pads: tuple[tuple[int, int], ...], dilation: tuple[int, int]) -> jax.Array:
    return _shifted(x, kernel, strides, pads, dilation)


_named_impl.__name__ = NAME
_named_impl.__qualname__ = NAME
named = jax.jit(_named_impl, static_argnums=(2, 3, 4))


def conv_general_dilated(lhs: jax.Array, rhs: jax.Array, window_strides: Sequence[int],
                         padding: Padding, lhs_dilation: Sequence[int] | None = None,
                         rhs_dilation: Sequence[int] | None = None,
                         dimension_numbers: Any = None, feature_group_count: int = 1,
                         batch_group_count: int = 1, precision: Any = None,
                         preferred_element_type: Any = None) -> jax.Array:
    """``lax.conv_general_dilated``, with 2-d NHWC x HWIO depthwise convolutions (one
    input and one output channel per group) computed by `depthwise_conv`."""
    c = lhs.shape[-1] if lhs.ndim == 4 else -1
    plain = lhs_dilation is None or all(int(v) == 1 for v in lhs_dilation)
    if (lhs.ndim == 4 and layout(dimension_numbers, 4) == NHWC_HWIO and plain
            and feature_group_count == c and rhs.shape[2:] == (1, c)
            and batch_group_count == 1 and preferred_element_type is None):
        return depthwise_conv(lhs, rhs, window_strides, padding, rhs_dilation or (1, 1))
    return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation,
                                    rhs_dilation, dimension_numbers, feature_group_count,
                                    batch_group_count, precision, preferred_element_type)
