"""The 2-D convolution of thinjax's models: oneDNN on XLA:CPU, XLA's convolution elsewhere.

XLA:CPU's own convolutions (Eigen's patch-packing kernels) are its slowest part for the thin
layers of ThinResNets, and it turns every kernel gradient into two transposes and a
convolution. oneDNN, the library behind PyTorch's CPU convolutions, computes all three
(forward, input gradient, kernel gradient) on NHWC data directly.
``conv2d(..., impl="auto")`` (what `thinjax.models.resnet.ResNet` uses) therefore calls
oneDNN through XLA FFI custom calls (``thinjax/ops/onednn_conv.cc``) when

* `thinjax.cpu.enable()` was called (the commands call it; `prefer_onednn`),

* JAX's default backend is the CPU and the process sees one device (``jax.device_count()
  == 1``; the custom calls carry no sharding rule, so a batch sharded over several CPU
  devices keeps XLA's convolution),
* the compute dtype (the activations') is float32, or bfloat16 on a CPU where oneDNN has
  native bfloat16 kernels (AVX-512 BF16 or AMX: `bf16_kernel`), and
* the kernels build and load here (`thinjax.ops.build`: Linux x86-64, a C++ compiler, the
  oneDNN wheels that thinjax depends on there).

Otherwise, and always with ``THINJAX_CONV=xla`` (or ``impl="xla"``), it is
``jax.lax.conv_general_dilated``. ``THINJAX_CONV=onednn`` (or ``impl="onednn"``) demands
oneDNN and raises if it cannot be used. The kernel may be float32 with bfloat16
activations (the model keeps float32 parameters): XLA's path casts it to the activations'
dtype, oneDNN's does it in its kernel reorder (both round to nearest even) and returns the
kernel gradient in float32 from oneDNN's float32 accumulation. In bfloat16 oneDNN's AMX or
AVX-512 BF16 kernels accumulate in float32 and round the output to bfloat16, as XLA's
convolution does. Results agree with XLA's to the rounding of the dtype
(different summation order); ``docs/performance.md`` has the measurements and
`status()` says which one ``auto`` picks here and why. The custom calls have a custom VJP
(first derivatives only: no ``jax.jvp``/``jax.hessian`` through them).
"""

from __future__ import annotations

import functools
import logging
import os

import jax
import jax.numpy as jnp
import numpy as np

from thinjax.errors import ConfigError
from thinjax.ops import build, lanes

__all__ = ["ENV", "IMPLS", "bf16_kernel", "boundary", "conv2d", "lane_boundary",
           "prefer_onednn", "resolve", "status", "xla_conv2d"]

ENV = "THINJAX_CONV"
IMPLS = ("auto", "xla", "onednn")
DIMS = ("NHWC", "HWIO", "NHWC")
DTYPES = (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16))  # compute dtypes oneDNN takes
# oneDNN kernels with native bfloat16 instructions (AVX-512 BF16, AMX, AVX2-VNNI-2); other
# CPUs keep XLA's convolution for bfloat16 (oneDNN would emulate it, or use its reference
# code)
BF16_NATIVE = ("avx512_core_bf16", "amx", "avx2_vnni_2")

log = logging.getLogger(__name__)
_WARNED: list[str] = []
_PREFER_ONEDNN = [False]  # set by thinjax.cpu.enable() (the commands call it)


def prefer_onednn(on: bool = True) -> None:
    """Whether ``impl="auto"`` uses oneDNN where it can (`thinjax.cpu.enable` turns it on;
    off, ``auto`` is XLA's convolution)."""
    _PREFER_ONEDNN[0] = bool(on)


def xla_conv2d(x, kernel, stride: int, padding: int):
    """XLA's convolution: NHWC `x`, HWIO `kernel`, square `stride`, symmetric `padding`."""
    return jax.lax.conv_general_dilated(x, kernel, (stride, stride), [(padding, padding)] * 2,
                                        dimension_numbers=DIMS)


def _attrs(stride: int, padding: int) -> dict:
    s, p = np.int64(stride), np.int64(padding)
    return dict(sh=s, sw=s, pt=p, pb=p, pl=p, pr=p)


def _call(target: str, out_like, *args, stride: int, padding: int):
    out = jax.ShapeDtypeStruct(out_like.shape, out_like.dtype)
    return jax.ffi.ffi_call(target, out, vmap_method="sequential")(*args,
                                                                   **_attrs(stride, padding))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def onednn_conv2d(x, kernel, stride: int, padding: int):
    """oneDNN's convolution (CPU; `x` float32 or bfloat16, `kernel` either): the result of
    `xla_conv2d` on `x` and `kernel` cast to `x`'s dtype; the kernel's gradient comes back in
    `kernel`'s dtype."""
    out = jax.eval_shape(functools.partial(xla_conv2d, stride=stride, padding=padding),
                         x, kernel.astype(x.dtype))
    return _call("thinjax_onednn_conv_fwd", out, x, kernel, stride=stride, padding=padding)


def _fwd(x, kernel, stride, padding):
    return onednn_conv2d(x, kernel, stride, padding), (x, kernel)


def _bwd(stride, padding, residuals, dy):
    x, kernel = residuals
    dy = lane_boundary(dy)  # made by elementwise code, read by oneDNN twice
    dx = _call("thinjax_onednn_conv_bwd_data", x, dy, kernel, stride=stride, padding=padding)
    if kernel.shape[:2] == (1, 1) and stride > 1 and padding == 0:
        # the same kernel gradient from the input's strided samples at stride 1: oneDNN
        # (3.2) computes a strided 1x1 kernel gradient through a unit-stride copy of the
        # input that overruns its buffer when the input has fewer channels than a SIMD
        # block (seen with AVX2, 1-7 channels tried: heap corruption, then a crash or a thread
        # spinning forever; tests/test_ops.py's strided 1x1 check)
        x, stride = x[:, ::stride, ::stride, :], 1
    dk = _call("thinjax_onednn_conv_bwd_weights", kernel, x, dy, stride=stride,
               padding=padding)
    return dx, dk


onednn_conv2d.defvjp(_fwd, _bwd)


def _auto_reason(dtype) -> str | None:
    """Why ``auto`` does not use oneDNN for `dtype` here, or None if it does."""
    if not _PREFER_ONEDNN[0]:
        return "thinjax.cpu.enable() was not called (the commands call it)"
    return _usable_reason(dtype)


def _usable_reason(dtype) -> str | None:
    """Why oneDNN cannot compute `dtype` here, or None if it can."""
    if jax.default_backend() != "cpu":
        return f"the default backend is {jax.default_backend()}"
    if jax.device_count() != 1:
        return f"{jax.device_count()} devices (the custom calls have no sharding rule)"
    if jnp.dtype(dtype) not in DTYPES:
        return (f"compute dtype {jnp.dtype(dtype).name} (the kernels are float32 and "
                "bfloat16)")
    try:
        build.load()
    except build.KernelUnavailable as e:
        if str(e) not in _WARNED:  # once per reason: the user expected the fast path
            _WARNED.append(str(e))
            log.warning("thinjax: XLA's convolutions, not oneDNN's: %s", e)
        return str(e)
    if jnp.dtype(dtype) == jnp.bfloat16 and not any(t in bf16_kernel() for t in BF16_NATIVE):
        return (f"no native bfloat16 convolution in oneDNN on this CPU (it would run "
                f"{bf16_kernel()}; wanted one of {', '.join(BF16_NATIVE)})")
    return None


def bf16_kernel() -> str:
    """The oneDNN implementation a bfloat16 convolution gets on this CPU (the kernels must
    load: `build.load`), e.g. ``brgconv:avx512_core_bf16``."""
    return build.load().ThinjaxOneDnnBf16Impl().decode()


def resolve(impl: str = "auto", dtype=jnp.float32) -> str:
    """The implementation `conv2d` uses: "xla" or "onednn" (see the module docstring)."""
    if impl == "auto":
        impl = os.environ.get(ENV, "").strip() or "auto"
    if impl not in IMPLS:
        raise ConfigError(f"unknown convolution implementation {impl!r} (from impl= or "
                          f"${ENV}); choose one of {', '.join(IMPLS)}")
    if impl != "auto":
        if impl == "onednn":
            reason = _usable_reason(dtype)
            if reason:
                raise build.KernelUnavailable(f"oneDNN convolutions were asked for but cannot "
                                              f"be used: {reason}")
        return impl
    return "xla" if _auto_reason(dtype) else "onednn"


def conv2d(x, kernel, stride: int = 1, padding: int = 0, impl: str = "auto",
           sole_reader: bool = False):
    """NHWC `x` convolved with HWIO `kernel` (square stride, symmetric zero padding),
    computed in `x`'s dtype (`kernel` is cast to it; its gradient keeps `kernel`'s dtype).

    With oneDNN, `x` passes a `lane_boundary` where `sole_reader` says that nothing else
    reads it (e.g. a ReLU's output made for this convolution; elsewhere the boundary
    would cost a copy), and so does the gradient of the result."""
    if 0 in x.shape or 0 in kernel.shape or resolve(impl, x.dtype) == "xla":
        return xla_conv2d(x, kernel.astype(x.dtype), stride, padding)
    if sole_reader:
        x = lane_boundary(x)
    return onednn_conv2d(x, kernel, stride, padding)


@jax.custom_vjp
def boundary(x):
    """`x`, computed by an FFI call whose result is aliased to `x` (no work, no copy):
    XLA:CPU fuses nothing across it, so whatever computed `x` is computed once, as its
    own fusion. The gradient passes as it is. The oneDNN kernels must be loaded (their
    library holds the call)."""
    out = jax.ShapeDtypeStruct(x.shape, x.dtype)
    return jax.ffi.ffi_call("thinjax_identity", out, input_output_aliases={0: 0},
                            vmap_method="broadcast_all")(x)


boundary.defvjp(lambda x: (boundary(x), None), lambda _, g: (g,))


def lane_boundary(x):
    """`x` (NHWC, made by elementwise code for a oneDNN custom call) with its lane view
    (`thinjax.ops.lanes`) passed through `boundary`: the same values and gradient.

    XLA:CPU fuses the reshape from the lane view to NHWC into the fusion computing `x`,
    which then loops over (N, H, W, C) and fetches every per-channel constant through
    integer index arithmetic and gathers: for the BatchNorm + ReLU feeding a 13-channel
    convolution that is 5x slower than the same fusion over the lane view. Behind the
    boundary the fusion loops over the lane view and the reshape is a free bitcast. A
    no-op where the channel count is a multiple of `lanes.LANES`. The oneDNN kernels
    must be loaded (`conv2d` calls it only then)."""
    k = lanes.lane_factor(x.shape)
    if k == 1 or 0 in x.shape:
        return x
    return lanes.from_lanes(boundary(lanes.to_lanes(x, k)), x.shape)


def status(dtype=jnp.float32) -> str:
    """Which implementation ``auto`` picks for compute `dtype` here, and why."""
    reason = _auto_reason(dtype)
    env = os.environ.get(ENV, "").strip()
    if env and env != "auto":
        return f"{env} (${ENV}={env})"
    if reason:
        return f"xla ({reason})"
    version = build.load().ThinjaxOneDnnVersion().decode()
    kernel = f", {bf16_kernel()}" if jnp.dtype(dtype) == jnp.bfloat16 else ""
    return f"onednn (oneDNN {version}{kernel})"
