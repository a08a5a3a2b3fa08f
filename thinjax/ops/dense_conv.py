"""nn.Conv's ordinary 2-D convolutions on `thinjax.ops.conv.conv2d` (oneDNN on XLA:CPU).

thinjax's ResNets compute every convolution with `conv2d`: with ``impl="auto"`` oneDNN's
custom calls when the commands enabled them (`thinjax.cpu.enable`) and they can be used,
else XLA's convolution. `conv_general_dilated` has ``lax.conv_general_dilated``'s
signature, so that ``nn.Conv(..., conv_general_dilated=conv_general_dilated)`` gets the
same choice while keeping nn.Conv's parameters (``kernel`` HWIO, ``bias``), names and
class: the example networks (`thinjax.models.examples`) pass it to their convolutions of
one group. It takes the convolutions `conv2d` computes: 2-D, NHWC x HWIO, one feature
group, a square stride, the same zero padding on all four sides, no dilation, operands of
one dtype and no ``precision`` / ``preferred_element_type``; every other one (a depthwise
layer: `thinjax.ops.depthwise`) goes to lax unchanged.

The call is a ``jax.jit`` named `NAME` whose static arguments hold the implementation
resolved at trace time: thinjax.trace reads a call of that name as the NHWC x HWIO
convolution it computes (same channel groups, same MACs) without walking into oneDNN's
custom VJP, and a jit cache entry made under one implementation is never reused under the
other (``THINJAX_CONV``, `thinjax.ops.conv.prefer_onednn`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
from jax import lax

from thinjax.ops import conv
from thinjax.ops.depthwise import NHWC_HWIO, Padding, layout, pad_pairs

__all__ = ["NAME", "as_lax", "conv_general_dilated", "square_padding"]

NAME = "thinjax_conv2d"


def _ones(v: Sequence[int] | None) -> bool:
    return v is None or all(int(d) == 1 for d in v)


def square_padding(padding: Padding, shape: tuple[int, ...], window: tuple[int, ...],
                   strides: tuple[int, ...]) -> int | None:
    """The zero padding of all four sides when `padding` ("SAME", "VALID" or pairs) pads
    every side of the 2-D `shape` alike, else None."""
    pads = pad_pairs(padding, shape, window, strides)
    sides = {int(v) for pair in pads for v in pair}
    return sides.pop() if len(pads) == 2 and len(sides) == 1 else None


def _named_impl(x: jax.Array, kernel: jax.Array, stride: int, padding: int,
                impl: str) -> jax.Array:
    return conv.conv2d(x, kernel, stride, padding, impl)


_named_impl.__name__ = NAME
_named_impl.__qualname__ = NAME
named = jax.jit(_named_impl, static_argnums=(2, 3, 4))


def _plain(lhs: jax.Array, rhs: jax.Array, window_strides: Sequence[int],
           dimension_numbers: Any, feature_group_count: int, batch_group_count: int,
           precision: Any, preferred_element_type: Any) -> bool:
    """Whether the convolution is one `conv2d` computes (padding aside)."""
    return (lhs.ndim == 4 and rhs.ndim == 4 and lhs.dtype == rhs.dtype
            and layout(dimension_numbers, 4) == NHWC_HWIO
            and feature_group_count == 1 and batch_group_count == 1
            and rhs.shape[2] == lhs.shape[3] and len(set(map(int, window_strides))) == 1
            and precision is None and preferred_element_type is None)


def conv_general_dilated(lhs: jax.Array, rhs: jax.Array, window_strides: Sequence[int],
                         padding: Padding, lhs_dilation: Sequence[int] | None = None,
                         rhs_dilation: Sequence[int] | None = None,
                         dimension_numbers: Any = None, feature_group_count: int = 1,
                         batch_group_count: int = 1, precision: Any = None,
                         preferred_element_type: Any = None) -> jax.Array:
    """``lax.conv_general_dilated``, with the convolutions `thinjax.ops.conv.conv2d`
    computes (see the module docstring) computed by it, in a jit named `NAME`."""
    if (_ones(lhs_dilation) and _ones(rhs_dilation)
            and _plain(lhs, rhs, window_strides, dimension_numbers, feature_group_count,
                       batch_group_count, precision, preferred_element_type)):
        s = int(window_strides[0])
        pad = square_padding(padding, lhs.shape[1:3], rhs.shape[:2], (s, s))
        if pad is not None:
            return named(lhs, rhs, s, pad, conv.resolve("auto", lhs.dtype))
    return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation,
                                    rhs_dilation, dimension_numbers, feature_group_count,
                                    batch_group_count, precision, preferred_element_type)


def as_lax(next_fun, args, kwargs, ctx):
    """A flax method interceptor (``nn.intercept_methods(as_lax)``): an nn.Conv given
    `conv_general_dilated` computes with lax's convolution instead (nn.Conv's default),
    the same network as before this module; for comparisons of the two."""
    mod = ctx.module
    if (isinstance(mod, nn.Conv) and ctx.method_name == "__call__"
            and mod.conv_general_dilated is conv_general_dilated):
        return mod.clone(parent=mod.scope, conv_general_dilated=None)(*args, **kwargs)
    return next_fun(*args, **kwargs)
