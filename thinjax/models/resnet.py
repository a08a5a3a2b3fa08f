"""Flax linen ResNet built from a channel plan (`thinjax.plan.Plan`).

Parameter paths follow the plan: ``stem/conv``, ``stem/bn``,
``stage2/block0/{conv1,bn1,conv2,bn2[,conv3,bn3]}``, ``stage2/block0/proj/{conv,bn}``,
``head``. Convolutions use PyTorch's symmetric padding, so that torchvision and study
checkpoints give the same numbers.

``model.apply(variables, x, masks=masks)`` runs the *masked* network: ``masks`` maps each
channel group (`thinjax.prune.groups`) to a 0/1 vector that multiplies the output of every
BatchNorm producing that group's channels, so pruned channels are exactly zero everywhere,
and a block whose inner channels are all masked loses its branch (as the plan's removed
blocks do). That is what the materialised, smaller network computes.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from thinjax.models.batchnorm import BatchNorm
from thinjax.ops import conv as ops_conv
from thinjax.ops.conv import conv2d
from thinjax.ops.lanes import lanewise
from thinjax.plan import Plan, stream_of

ModuleDef = Any

# torchvision's init: kaiming normal, fan_out, for ReLU.
conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


class Conv(nn.Module):
    """A bias-free square convolution with PyTorch's symmetric padding; the same parameter
    (``kernel``, HWIO) and numerics as ``nn.Conv``, computed by `thinjax.ops.conv.conv2d`
    (oneDNN on XLA:CPU when `impl` is "auto" and it can be used, else XLA's convolution)."""
    features: int
    kernel: int
    stride: int = 1
    dtype: Any = jnp.float32
    impl: str = "auto"

    @nn.compact
    def __call__(self, x, sole_reader: bool = False):
        """`sole_reader`: nothing else reads `x` (`thinjax.ops.conv.conv2d`)."""
        shape = (self.kernel, self.kernel, x.shape[-1], self.features)
        kernel = self.param("kernel", conv_init, shape, jnp.float32)
        # float32 kernel, `dtype` activations: conv2d computes in `dtype` (oneDNN casts the
        # kernel in its reorder and returns a float32 kernel gradient)
        return conv2d(x.astype(self.dtype), kernel, self.stride, (self.kernel - 1) // 2,
                      self.impl, sole_reader)


def fusion_barrier(x, ref=None):
    """``x / 1``: an exact identity (also for inf and NaN) that XLA:CPU computes once.

    A residual stage is a chain of cheap elementwise ops (BN affine, add, ReLU) between
    convolutions. XLA:CPU's fusion pass duplicates cheap producers into every consumer, so
    each block's output was recomputed inside its consumers from all earlier blocks' conv
    outputs: work quadratic in depth (in a ResNet-56 training step, 54% of the time went to
    transposes that recomputed the chain). Division is an op XLA will not duplicate, so
    dividing each block's output by a 1 that is only known at run time makes XLA compute
    it once and read it everywhere (ResNet-56 w=16 training step on one core: 0.24x ->
    0.58x PyTorch's images/s, ``docs/performance.md``). The 1 is computed at run time from
    the first element of ``ref`` (default ``x``; blocks pass their last BatchNorm scale, a
    replicated parameter, so that a batch-sharded ``x`` costs no collective): clamped to a
    finite value, times 0, plus 1, so exactly 1 whatever it holds. It carries no gradient,
    so values and gradients are unchanged.
    """
    src = x if ref is None else ref
    first = jax.lax.slice(src, (0,) * src.ndim, (1,) * src.ndim)
    # a finite run-time scalar times 0; a reduction, so XLA keeps the divide in the
    # backward pass too (a broadcast (1,1,1,1) divisor loses it there)
    one = jnp.sum(jnp.where(jnp.abs(first) < 1, first, 0)) * 0 + 1
    return x / jax.lax.stop_gradient(one).astype(x.dtype)


def _barrier_and_boundary(x, ref=None):
    """`fusion_barrier`, then `thinjax.ops.conv.boundary` (with oneDNN's kernels).

    In an inference graph XLA's algebraic simplifier turns the barrier's ``x / one`` into
    ``x * (1 / one)``, a multiplication it duplicates into consumers again: the residual
    chain was recomputed in every block's fusion (ResNet-56 w=16 evaluation step: fusions
    reading 59 arrays; 8% of the step for w=16, 10-13% for pruned networks). The boundary
    (an FFI identity, no copy) holds in both graphs; the barrier stays for the training
    graph's backward pass, where its division (the transpose) keeps the chain apart."""
    return ops_conv.boundary(fusion_barrier(x, ref))


def _masked(x, m):
    return x if m is None else x * m.astype(x.dtype)


def _relu_masked(x, m):
    return nn.relu(_masked(x, m))


class ConvBN(nn.Module):
    """A conv followed by BatchNorm: the stem and the projection shortcut."""
    features: int
    kernel: int
    stride: int
    conv: ModuleDef
    norm: ModuleDef

    @nn.compact
    def __call__(self, x, mask=None):
        x = self.conv(self.features, self.kernel, self.stride, name="conv")(x)
        return lanewise(_masked, self.norm(name="bn")(x), mask)


class Block(nn.Module):
    """Basic (inner=(c1,)) or bottleneck (inner=(c1, c2)) residual block. `conv` and `norm`
    make its layers and `barrier` (or None) ends it: `ResNet` chooses them, in one place."""
    inner: tuple[int, ...]
    out: int
    stride: int
    proj: bool
    conv: ModuleDef
    norm: ModuleDef
    zero_init_last: bool = False
    barrier: Any = None

    @nn.compact
    def __call__(self, x, out_mask=None, inner_masks=None):
        inner_masks = inner_masks or (None,) * len(self.inner)
        shortcut = x
        if self.proj:
            shortcut = ConvBN(self.out, 1, self.stride, self.conv, self.norm,
                              name="proj")(x, out_mask)
        if all(c == 0 for c in self.inner):  # branch removed: the block is the identity
            return lanewise(nn.relu, shortcut)
        last_norm = functools.partial(self.norm, scale_init=nn.initializers.zeros) \
            if self.zero_init_last else self.norm
        conv = self.conv
        if len(self.inner) == 1:  # basic
            y = conv(self.inner[0], 3, self.stride, name="conv1")(x)
            y = lanewise(_relu_masked, self.norm(name="bn1")(y), inner_masks[0])
            y = conv(self.out, 3, 1, name="conv2")(y, sole_reader=True)
            y = last_norm(name="bn2")(y)
        else:  # bottleneck, stride on the 3x3 conv (v1.5)
            y = conv(self.inner[0], 1, 1, name="conv1")(x)
            y = lanewise(_relu_masked, self.norm(name="bn1")(y), inner_masks[0])
            y = conv(self.inner[1], 3, self.stride, name="conv2")(y, sole_reader=True)
            y = lanewise(_relu_masked, self.norm(name="bn2")(y), inner_masks[1])
            y = conv(self.out, 1, 1, name="conv3")(y, sole_reader=True)
            y = last_norm(name="bn3")(y)
        alive = None
        if inner_masks[0] is not None:  # every inner channel masked: no branch at all
            alive = jnp.all(jnp.stack([jnp.any(m > 0) for m in inner_masks])).astype(y.dtype)
        # the barrier's divisor from a (replicated) parameter: no collective on a sharded
        # batch
        last = None if self.barrier is None else \
            self.variables["params"][f"bn{len(self.inner) + 1}"]["scale"]

        def tail(y, shortcut, out_mask, alive):  # elementwise: in the lane view
            y = _masked(y, out_mask)
            out = nn.relu((y if alive is None else y * alive) + shortcut)
            return out if last is None else self.barrier(out, last)

        return lanewise(tail, y, shortcut, out_mask, alive)


class Stage(nn.Module):
    plan: Plan
    index: int
    conv: ModuleDef
    norm: ModuleDef
    zero_init_last: bool = False
    barrier: Any = None

    @nn.compact
    def __call__(self, x, masks=None):
        s = self.plan.stages[self.index]
        for bi, b in enumerate(s.blocks):
            out_mask, inner = None, None
            if masks is not None:
                out_mask = masks[stream_of(self.plan)[f"stage{self.index + 1}"]]
                if not b.removed:
                    block = f"stage{self.index + 1}/block{bi}"
                    inner = tuple(masks[f"{block}/conv{k + 1}"] for k in range(len(b.inner)))
            x = Block(b.inner, s.width, s.stride if bi == 0 else 1, b.proj, self.conv,
                      self.norm, self.zero_init_last, self.barrier,
                      name=f"block{bi}")(x, out_mask, inner)
        return x


class ResNet(nn.Module):
    """A ResNet whose every channel count comes from `plan`.

    Input: NHWC images. Output: float32 logits. `dtype` is the compute dtype (e.g.
    bfloat16); parameters and BatchNorm statistics stay float32. Three implementation
    choices, read in one place (`layers`) and handed to the blocks as layer factories:
    `fused_bn` (default) uses `thinjax.models.batchnorm.BatchNorm`, whose hand-written
    backward pass is faster on XLA:CPU; ``fused_bn=False`` is ``nn.BatchNorm`` (same
    variables and numerics). `fusion_barrier` applies `fusion_barrier` to every block's
    output (same values); None (default) means: when JAX's default backend is the CPU.
    `conv_impl` ("auto", "xla", "onednn") picks the convolution (`thinjax.ops.conv`):
    "auto" is oneDNN where `thinjax.cpu.enable()` turned it on and it can be used, XLA's
    convolution otherwise.
    """
    plan: Plan
    zero_init_last_bn: bool = False
    bn_momentum: float = 0.9  # Flax convention: PyTorch momentum 0.1 == Flax 0.9
    bn_epsilon: float = 1e-5
    dtype: Any = jnp.float32
    fused_bn: bool = True
    fusion_barrier: bool | None = None
    conv_impl: str = "auto"

    def layers(self, train: bool) -> tuple[ModuleDef, ModuleDef, Any]:
        """(conv, norm, barrier or None): the one place that picks the implementations."""
        conv = functools.partial(Conv, dtype=self.dtype, impl=self.conv_impl)
        # variance E[(x - mean)^2], not E[x^2] - mean^2, which cancels catastrophically
        # for channels with a large mean (PyTorch is stable here too).
        onednn = ops_conv.resolve(self.conv_impl, self.dtype) == "onednn"
        norm = functools.partial(BatchNorm if self.fused_bn else nn.BatchNorm,
                                 use_running_average=not train, momentum=self.bn_momentum,
                                 epsilon=self.bn_epsilon, dtype=self.dtype,
                                 param_dtype=jnp.float32)
        if not self.fused_bn:
            norm = functools.partial(norm, use_fast_variance=False)
        elif onednn:  # per-channel constants of odd channel counts: computed once
            norm = functools.partial(norm, hold=ops_conv.boundary)
        on = jax.default_backend() == "cpu" if self.fusion_barrier is None \
            else self.fusion_barrier
        if not on:
            return conv, norm, None
        return conv, norm, _barrier_and_boundary if onednn else fusion_barrier

    @nn.compact
    def __call__(self, x, train: bool = False, masks=None):
        conv, norm, barrier = self.layers(train)
        p = self.plan
        x = x.astype(self.dtype)
        stem_mask = None if masks is None else masks[stream_of(p)["stem"]]
        kernel, stride = (7, 2) if p.stem == "imagenet" else (3, 1)
        x = lanewise(nn.relu, ConvBN(p.stem_width, kernel, stride, conv, norm,
                                      name="stem")(x, stem_mask))
        if p.stem == "imagenet":
            x = nn.max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)))
        for si in range(len(p.stages)):
            x = Stage(p, si, conv, norm, self.zero_init_last_bn, barrier,
                      name=f"stage{si + 1}")(x, masks)
        x = jnp.mean(x, axis=(1, 2))
        x = nn.Dense(p.num_classes, dtype=self.dtype, param_dtype=jnp.float32, name="head")(x)
        return x.astype(jnp.float32)


def build_model(plan: Plan, **options) -> ResNet:
    """ResNet(plan) with model options (zero_init_last_bn, bn_momentum, bn_epsilon, dtype)."""
    dtype = options.pop("dtype", jnp.float32)
    if isinstance(dtype, str):
        dtype = jnp.dtype(dtype)
    return ResNet(plan, dtype=dtype, **options)


def init_variables(model: ResNet, rng, input_size: int, batch: int = 1) -> dict:
    """Parameters and batch statistics for `model` on `input_size`^2 images."""
    x = jnp.zeros((batch, input_size, input_size, model.plan.in_channels), jnp.float32)
    return jax.jit(functools.partial(model.init, train=False))(rng, x)


def variable_shapes(plan: Plan) -> dict:
    """ShapeDtypeStructs of {'params', 'batch_stats'} for `plan`, without computing anything."""
    size = 64 if plan.stem == "imagenet" else 32
    x = jax.ShapeDtypeStruct((1, size, size, plan.in_channels), jnp.float32)
    return jax.eval_shape(functools.partial(ResNet(plan).init, train=False),
                          jax.random.PRNGKey(0), x)


def random_variables(plan: Plan, seed: int = 0) -> dict:
    """Random float32 numpy variables of `plan`'s shapes, without a compiled init (fast for
    any size: tests and benchmarks). Kernels ~ N(0, 1/fan_in), BN scales and variances
    ~ U(0.5, 1.5), BN shifts and means ~ N(0, 1)."""
    r = np.random.default_rng(seed)

    def make(path, s):
        if path[-1] in ("var", "scale"):
            return r.uniform(0.5, 1.5, s.shape).astype(np.float32)
        fan_in = int(np.prod(s.shape[:-1])) or 1
        return (r.standard_normal(s.shape) * np.sqrt(1.0 / fan_in)).astype(np.float32)

    return {col: traverse_util.unflatten_dict(
        {p: make(p, s) for p, s in traverse_util.flatten_dict(tree).items()})
        for col, tree in variable_shapes(plan).items()}
