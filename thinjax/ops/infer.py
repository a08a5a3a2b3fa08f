"""Inference convolutions: ``[relu](conv(x, kernel) + bias [+ residual])`` as one op.

A network with BatchNorm folded into its convolutions (`thinjax.models.fold`) needs, after
each convolution, a per-channel bias, at the end of a residual block the shortcut, and a
ReLU. `conv2d_fused` computes all of it in one oneDNN primitive with bias, sum and ReLU
post-ops (``onednn_infer.cc``, an XLA FFI handler in the library `thinjax.ops.build`
builds) where `thinjax.ops.conv.resolve` picks oneDNN, and as XLA's convolution plus one
elementwise fusion elsewhere. Forward only: it has no gradient.

Where oneDNN computes, two layouts matter:

* the kernel: oneDNN's kernels read their own blocked layouts; `kernel_layout` names the
  one a convolution wants and `layout_kernel` puts an HWIO kernel into it, once (a kernel
  passed as HWIO is reordered in every call: negligible for large batches, not at batch 1);
* the activations: NHWC, or oneDNN's nChw16c held as ``(N, C/16, H, W, 16)``
  (`to_blocked`), which its direct kernels compute faster for 32 channels and more
  (ResNet-56 w=16 at batch 64: 5% less convolution time on an AMD EPYC); one image in
  nChw16c cannot be split by rows over the inference threads, so batches of one stay
  NHWC. For 16 channels both are the same bytes, and such a convolution runs the NHWC
  kernels on them.

``rows=True`` takes NHCW activations, ``(N, H, C, W)`` (`to_rows`), and runs thinjax's
own row kernels (``rowconv.cc``; AVX-512 and AVX2 CPUs, `row_kernels`) instead of
oneDNN's: those put 16 output pixels of a row in a vector (8 on AVX2) where oneDNN's put 8
or 16 output channels, so they keep every lane busy for channel counts that are not
multiples of 8 (a round_to 1 pruning's 9 to 15 channels fill 9 to 15 of oneDNN's 16
lanes) as long as rows are 16, 32, 48 ... (on AVX2 8, 16, 24 ...) pixels wide.
`conv_costs` estimates both for a convolution.

The library splits each convolution over its own threads (a batch by images, one image by
output rows): see the comment on ``Team`` in ``onednn_infer.cc``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from thinjax.ops import build
from thinjax.ops.conv import resolve, xla_conv2d

__all__ = ["OIHW16I16O", "blocked_kernels", "conv2d_fused", "conv_costs", "from_blocked",
           "from_rows", "kernel_layout", "layout_kernel", "row_block", "row_kernels", "row_lanes",
           "to_blocked", "to_rows", "unlayout_kernel"]

# the layout code of (ceil(co/16), ceil(ci/16), kh, kw, 16, 16), zero-padded (oneDNN's
# ABcd16b16a)
OIHW16I16O = -16


def to_blocked(x):
    """NHWC `x` (channels a multiple of 16) as nChw16c: ``(N, C/16, H, W, 16)``."""
    n, h, w, c = x.shape
    return jnp.transpose(x.reshape(n, h, w, c // 16, 16), (0, 3, 1, 2, 4))


def from_blocked(x):
    """`to_blocked`'s inverse."""
    n, cb, h, w, _ = x.shape
    return jnp.transpose(x, (0, 2, 3, 1, 4)).reshape(n, h, w, cb * 16)


def to_rows(x):
    """NHWC `x` as NHCW, ``(N, H, C, W)``: each channel's rows contiguous (`rows=True`)."""
    return jnp.transpose(x, (0, 1, 3, 2))


def from_rows(x):
    """`to_rows`'s inverse."""
    return jnp.transpose(x, (0, 1, 3, 2))


def row_block(co: int) -> int:
    """The layout code (`layout_kernel`) of kernels for the row kernels with `co` output
    channels: they compute blocks of at most 16 (``rowconv.cc``), as even as can be."""
    return -(-co // -(-co // 16))


@functools.lru_cache(maxsize=1)
def row_lanes() -> int:
    """The output pixels a vector of thinjax's row kernels holds here: 16 on AVX-512 CPUs,
    8 on AVX2 (with FMA) ones, 0 where they do not run."""
    try:
        return int(build.load().ThinjaxInferRowKernels())
    except build.KernelUnavailable:
        return 0


def row_kernels() -> bool:
    """Whether thinjax's row kernels (``rows=True``) run here: AVX-512 and AVX2 CPUs."""
    return row_lanes() > 0


# `conv_costs`' model, fitted to timings of 3x3 convolutions of 8 to 32 channels (200 pairs
# of counts) at 16x16 and 32x32, batch 64, on one core of an AMD EPYC (Zen 4; a shared
# machine, min of 15 runs): oneDNN's NHWC kernels cost _DNN_NS per vector multiply-add (a
# 16-wide one, or two 8-wide ones), plus _DNN_BCAST of one per input value broadcast (once
# per output pixel, input channel and tap, shared by the pixel's output vectors) and
# _DNN_STORE per output vector (13% rms error); the row kernels _ROW_NS per multiply-add
# plus _ROW_STORE per output vector (8%), and at stride 2 _ROW_STRIDED times that (they
# load twice the pixels and keep every other one). Choosing by the model over the measured
# pairs costs 1.4% over the faster of each pair.
_DNN_NS, _DNN_BCAST, _DNN_STORE = 0.243, 0.22, 7.4
_ROW_NS, _ROW_STORE, _ROW_STRIDED = 0.300, 4.0, 1.1


# On AVX2 CPUs (8-wide vectors in both) another fit, to the convolutions of the round_to 1
# and round_to 8 L1 prunings of the release ResNet-56 w=16 to 50% and 25% of the MACs
# (`benchmarks/infer_layers.py --layers --force=dnn|rows`, batch 64, one core of an AMD
# EPYC Zen 3, min of 15 runs; the residual layers left out): oneDNN's NHWC kernels cost
# _AVX2_DNN[0] per 8-wide multiply-add, [1] more where the output channels are not a
# multiple of 8, [2] per output vector and [3] per input value broadcast (16% rms error);
# the row kernels _AVX2_ROW[0] per multiply-add at stride 1, [1] at stride 2 (two loads and
# a shuffle per vector), [2] per output vector (9%). Choosing each stage's kernels by the
# model costs 0.3% over the faster of each stage measured.
_AVX2_DNN = (0.129, 0.047, 7.9, 0.048)
_AVX2_ROW = (0.162, 0.305, 15.8)


def conv_costs(n: int, oh: int, ow: int, ci: int, co: int, k: int, stride: int,
               lanes: int = 16) -> tuple[float, float]:
    """Estimated ns of a k x k convolution with `n` images of `ci` channels to `co` at
    `oh` x `ow`: (oneDNN's NHWC kernels, the row kernels), on a CPU whose row kernels hold
    `lanes` pixels a vector (`row_lanes`: 16 on AVX-512, 8 on AVX2). oneDNN computes output
    channels in 16-wide vectors there (8-wide for 8 modulo 16 of them: ``onednn_infer.cc``;
    8-wide on AVX2), the row kernels output pixels of a row: each pays for its idle lanes."""
    if lanes == 8:
        return _avx2_costs(n, oh, ow, ci, co, k, stride)
    lanes = 8 if co % 16 == 8 else 16
    pixels, taps = n * oh * ow, k * k * ci
    vectors = pixels * -(-co // lanes)
    dnn = (vectors * (taps * lanes / 16 + _DNN_STORE) + pixels * taps * _DNN_BCAST) * _DNN_NS
    rows = n * oh * co * -(-ow // 16)
    row = rows * (taps + _ROW_STORE) * _ROW_NS * (_ROW_STRIDED if stride > 1 else 1.0)
    return dnn, row


def _avx2_costs(n: int, oh: int, ow: int, ci: int, co: int, k: int, stride: int
                ) -> tuple[float, float]:
    pixels, taps = n * oh * ow, k * k * ci
    vectors, odd = pixels * -(-co // 8), co % 8 != 0
    fma, odd_fma, store, bcast = _AVX2_DNN
    dnn = vectors * (taps * (fma + odd_fma * odd) + store) + pixels * taps * bcast
    rows = n * oh * co * -(-ow // 8)
    fma, strided_fma, store = _AVX2_ROW
    return dnn, rows * (taps * (strided_fma if stride > 1 else fma) + store)


@functools.lru_cache(maxsize=1)
def blocked_kernels() -> bool:
    """Whether oneDNN has direct kernels for nChw16c here (AVX-512 CPUs; on others it would
    fall back to its reference convolution, so activations stay NHWC)."""
    try:
        return bool(build.load().ThinjaxInferBlockedKernels())
    except build.KernelUnavailable:
        return False


def _nhwc_view(x_shape: tuple[int, ...], co: int) -> bool:
    """Whether a convolution of nChw16c input `x_shape` runs the NHWC kernels: 16 channels
    in and out (nChw16c and NHWC are then the same bytes, and the NHWC kernels are faster)."""
    return len(x_shape) == 5 and x_shape[1] == 1 and co == 16


@functools.lru_cache(maxsize=4096)
def kernel_layout(x_shape: tuple[int, ...], kernel_size: int, co: int, stride: int,
                  padding: int) -> int:
    """The code of the kernel layout oneDNN's inference convolution wants for input of
    `x_shape` (4-D NHWC or 5-D nChw16c): B > 0 for ``(ceil(co/B), k, k, ci, B)`` (output
    channels zero-padded to a multiple of B), `OIHW16I16O`, or 0 (HWIO: another layout, or
    oneDNN is not loaded here)."""
    try:
        lib = build.load()
    except build.KernelUnavailable:
        return 0
    shape = tuple(int(d) for d in x_shape)
    if _nhwc_view(shape, co):
        shape = (shape[0], shape[2], shape[3], 16)
    blocked = len(shape) == 5
    n, h, w = shape[0], shape[1 + blocked], shape[2 + blocked]
    ci = shape[1] * 16 if blocked else shape[3]
    return int(lib.ThinjaxInferKernelLayout(n, h, w, ci, kernel_size, kernel_size, co, stride,
                                            stride, padding, padding, padding, padding,
                                            int(blocked)))


def layout_kernel(kernel, code: int):
    """HWIO `kernel` in the layout `code` names (`kernel_layout`); 0 returns it as it is."""
    kh, kw, ci, co = kernel.shape
    if code == OIHW16I16O:
        k = jnp.pad(kernel, ((0, 0), (0, 0), (0, -ci % 16), (0, -co % 16)))
        k = k.reshape(kh, kw, -(-ci // 16), 16, -(-co // 16), 16)
        return jnp.transpose(k, (4, 2, 0, 1, 3, 5))
    if not code:
        return kernel
    pad = -co % code
    k = jnp.pad(kernel, ((0, 0), (0, 0), (0, 0), (0, pad))) if pad else kernel
    return jnp.transpose(k.reshape(kh, kw, ci, -1, code), (3, 0, 1, 2, 4))


def unlayout_kernel(kernel, co: int, ci: int | None = None):
    """`layout_kernel`'s inverse: the HWIO kernel with `co` output channels (and `ci`
    input channels: needed for `OIHW16I16O` when they are not a multiple of 16)."""
    if kernel.ndim == 6:
        ob, ib, kh, kw, _, _ = kernel.shape
        k = jnp.transpose(kernel, (2, 3, 1, 4, 0, 5)).reshape(kh, kw, ib * 16, ob * 16)
        return k[:, :, :ib * 16 if ci is None else ci, :co]
    if kernel.ndim == 4:
        return kernel
    nb, kh, kw, ci, block = kernel.shape
    return jnp.transpose(kernel, (1, 2, 3, 0, 4)).reshape(kh, kw, ci, nb * block)[..., :co]


def _kernel_size(kernel) -> int:
    return kernel.shape[{4: 0, 5: 1, 6: 2}[kernel.ndim]]


def _xla_fused(x, kernel, bias, stride, padding, residual, relu):
    if x.ndim == 5:  # nChw16c: computed in NHWC
        r = None if residual is None else from_blocked(residual)
        return to_blocked(_xla_fused(from_blocked(x), kernel, bias, stride, padding, r, relu))
    y = xla_conv2d(x, unlayout_kernel(kernel, bias.shape[0], x.shape[3]), stride,
                   padding) + bias
    if residual is not None:
        y = y + residual
    return jax.nn.relu(y) if relu else y


def conv2d_fused(x, kernel, bias, stride: int = 1, padding: int = 0, residual=None,
                 relu: bool = False, impl: str = "auto", rows: bool = False):
    """``[relu](conv2d(x, kernel) + bias [+ residual])`` in float32 (module docstring): `x`
    and `residual` NHWC, nChw16c (`to_blocked`) or, with `rows`, NHCW (`to_rows`; the
    result has `x`'s layout), `kernel` HWIO or in a `layout_kernel` layout, `bias` per
    output channel; square `stride`, symmetric zero `padding`."""
    f32 = jnp.dtype(jnp.float32)
    co = bias.shape[0]
    if rows:
        return _rows_fused(x, kernel, bias, stride, padding, residual, relu, impl)
    if (0 in x.shape or 0 in kernel.shape or x.dtype != f32 or kernel.dtype != f32
            or resolve(impl, f32) == "xla"):
        return _xla_fused(x, kernel.astype(f32), bias.astype(f32), stride, padding,
                          residual, relu)
    if _nhwc_view(x.shape, co):
        r = None if residual is None else residual.reshape(residual.shape[0], *residual.shape[2:])
        y = conv2d_fused(x.reshape(x.shape[0], *x.shape[2:]), kernel, bias, stride, padding,
                         r, relu, impl)
        return y.reshape(y.shape[0], 1, *y.shape[1:])
    k = _kernel_size(kernel)
    a = x.ndim - 4  # 1 where nChw16c: the first spatial axis
    oh, ow = ((x.shape[1 + a + i] + 2 * padding - k) // stride + 1 for i in (0, 1))
    shape = (x.shape[0], co // 16, oh, ow, 16) if a else (x.shape[0], oh, ow, co)
    out = jax.ShapeDtypeStruct(shape, f32)
    return _ffi(x, kernel, bias, out, stride, padding, residual, relu, False)


def _ffi(x, kernel, bias, out, stride, padding, residual, relu, rows):
    s, p = np.int64(stride), np.int64(padding)
    attrs = dict(sh=s, sw=s, pt=p, pb=p, pl=p, pr=p, relu=np.int64(relu), rows=np.int64(rows))
    if residual is None:
        return jax.ffi.ffi_call("thinjax_onednn_conv_infer", out, vmap_method="sequential")(
            x, kernel, bias, **attrs)
    return jax.ffi.ffi_call("thinjax_onednn_conv_infer_add", out, vmap_method="sequential",
                            input_output_aliases={3: 0})(
        x, kernel, bias, residual.astype(jnp.float32), **attrs)


def _rows_fused(x, kernel, bias, stride, padding, residual, relu, impl):
    """`conv2d_fused` of NHCW `x` (and `residual`): the row kernels where they run, else
    computed in NHWC."""
    f32 = jnp.dtype(jnp.float32)
    co = bias.shape[0]
    if (0 in x.shape or 0 in kernel.shape or x.dtype != f32 or kernel.dtype != f32
            or resolve(impl, f32) == "xla" or not row_kernels()):
        r = None if residual is None else from_rows(residual)
        hwio = unlayout_kernel(kernel, co, x.shape[2])  # (a row-kernel layout: not oneDNN's)
        return to_rows(conv2d_fused(from_rows(x), hwio, bias, stride, padding, r, relu, impl))
    if kernel.ndim == 6 or (kernel.ndim == 5 and kernel.shape[-1] != row_block(co)):
        kernel = unlayout_kernel(kernel, co, x.shape[2])  # HWIO, or their own layout
    k = _kernel_size(kernel)
    oh, ow = ((x.shape[i] + 2 * padding - k) // stride + 1 for i in (1, 3))
    out = jax.ShapeDtypeStruct((x.shape[0], oh, co, ow), f32)
    return _ffi(x, kernel, bias, out, stride, padding, residual, relu, True)
