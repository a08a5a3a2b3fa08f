"""Inference with BatchNorm folded into the convolutions: the forward pass a deployment runs.

In inference BatchNorm is a per-channel affine map with the running statistics, so it folds
into the convolution before it (as ONNX exporters and TFLite do):

    BN(conv(x, k)) = conv(x, k * s) + (bias - mean * s),    s = scale / sqrt(var + eps)

`fold` computes these kernels and biases from a model's variables (channel masks of a
masked network fold in too: a masked channel's kernel column and bias are zero), and
`forward` runs the plan with them: every convolution is followed by one bias (+ residual)
+ ReLU, which `thinjax.ops.infer.conv2d_fused` computes in one oneDNN primitive where the
oneDNN kernels are used (bias, sum and ReLU post-ops), or as XLA's convolution and one fused
elementwise op elsewhere. With oneDNN, a batch of several images through a network whose
every channel count is a multiple of 16 keeps its activations in oneDNN's nChw16c layout
(`blocked`); in other networks, a stage whose convolutions thinjax's row kernels are
estimated to compute faster than oneDNN's (`row_stages`: channel counts that leave
oneDNN's vector lanes idle, e.g. a round_to 1 pruning's) runs them on NHCW activations
(the layout changes between stages); and a batch of more than `MAX_BATCH` images runs in
chunks. The logits are those of ``ResNet(plan).apply(variables, x)`` (inference mode) up
to float32 rounding (the fold rounds once more per weight; measured in
``tests/test_fold.py``).

    folded = fold(plan, variables)                  # once: numpy or jax arrays
    logits = forward(plan, folded, images)          # NHWC float32 -> logits (jit it)
    run = forward_fn(plan, variables, images.shape)  # for deployment: folded, laid out,
    logits = run(images)                             # jitted once; images -> logits

`prepare` puts each folded kernel in the layout oneDNN's convolution wants for a given
input shape (`thinjax.ops.infer.layout_kernel`), so that no call reorders it;
`forward_fn` does all of it once and closes over the result, so that a call passes only
the images (passing ResNet-56's 116 parameter arrays through ``jax.jit`` costs 44 us a
call, more than one of its convolutions at batch 1; the images alone, 5 us).

Folded variables are a dict: ``stem``, ``stageN/blockM/{conv1,conv2[,conv3],proj}`` each
``{"kernel": HWIO, "bias": (out,)}``, and ``head`` (Dense kernel and bias); a removed
block's entry is empty.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from thinjax.ops.conv import resolve
from thinjax.ops.infer import (
    blocked_kernels,
    conv2d_fused,
    conv_costs,
    from_rows,
    kernel_layout,
    layout_kernel,
    row_block,
    row_kernels,
    row_lanes,
    to_blocked,
    to_rows,
)
from thinjax.plan import Plan, stream_of

__all__ = ["MAX_BATCH", "blocked", "fold", "fold_conv", "forward", "forward_fn", "prepare",
           "row_stages"]

MAX_BATCH = 64  # `forward` computes larger batches in chunks of at most this many images


def fold_conv(kernel, bn_params: Mapping, bn_stats: Mapping, eps: float = 1e-5,
              mask=None) -> dict:
    """{"kernel", "bias"} of a bias-free conv (HWIO `kernel`) followed by inference
    BatchNorm, times `mask` (per output channel) when given; float32."""
    s = jnp.asarray(bn_params["scale"], jnp.float32) * jax.lax.rsqrt(
        jnp.asarray(bn_stats["var"], jnp.float32) + eps)
    b = jnp.asarray(bn_params["bias"], jnp.float32) - jnp.asarray(bn_stats["mean"],
                                                                  jnp.float32) * s
    if mask is not None:
        s, b = s * mask, b * mask
    return {"kernel": jnp.asarray(kernel, jnp.float32) * s, "bias": b}


def _block_masks(plan: Plan, masks: Mapping | None, si: int, bi: int, n: int):
    """(out mask, inner masks, alive) of a block: None each without masks; alive is 0 when
    every inner channel of the block is masked (the branch is gone, as in the model)."""
    if masks is None:
        return None, (None,) * n, None
    out = jnp.asarray(masks[stream_of(plan)[f"stage{si + 1}"]], jnp.float32)
    if plan.stages[si].blocks[bi].removed:
        return out, (None,) * n, None
    inner = tuple(jnp.asarray(masks[f"stage{si + 1}/block{bi}/conv{k + 1}"], jnp.float32)
                  for k in range(n))
    alive = jnp.all(jnp.stack([jnp.any(m > 0) for m in inner])).astype(jnp.float32)
    return out, inner, alive


def fold(plan: Plan, variables: Mapping, eps: float = 1e-5, masks: Mapping | None = None
         ) -> dict:
    """The folded variables of `plan` (module docstring) from a model's ``{"params",
    "batch_stats"}``; `masks`: the channel masks of a masked network (as for
    ``ResNet.apply(..., masks=masks)``). Pure: works on numpy arrays and under jit."""
    p, st = variables["params"], variables["batch_stats"]
    stem_mask = None if masks is None else jnp.asarray(masks[stream_of(plan)["stem"]],
                                                       jnp.float32)
    out: dict[str, Any] = {"stem": fold_conv(p["stem"]["conv"]["kernel"], p["stem"]["bn"],
                                             st["stem"]["bn"], eps, stem_mask),
                           "head": {k: jnp.asarray(v, jnp.float32)
                                    for k, v in p["head"].items()}}
    for si, stage in enumerate(plan.stages):
        for bi, b in enumerate(stage.blocks):
            # a removed block has no variables (nor a projection: `validate`)
            bp = p[f"stage{si + 1}"].get(f"block{bi}", {})
            bs = st[f"stage{si + 1}"].get(f"block{bi}", {})
            n = len(b.inner)
            omask, inner, alive = _block_masks(plan, masks, si, bi, n)
            f = {}
            if b.proj:
                f["proj"] = fold_conv(bp["proj"]["conv"]["kernel"], bp["proj"]["bn"],
                                      bs["proj"]["bn"], eps, omask)
            if not b.removed:
                for k in range(n + 1):
                    last = k == n
                    m = inner[k] if not last else omask
                    if last and alive is not None:
                        m = m * alive
                    f[f"conv{k + 1}"] = fold_conv(bp[f"conv{k + 1}"]["kernel"],
                                                  bp[f"bn{k + 1}"], bs[f"bn{k + 1}"], eps, m)
            out[f"stage{si + 1}/block{bi}"] = f
    return out


def blocked(plan: Plan, input_shape: tuple[int, ...], impl: str = "auto") -> bool:
    """Whether `forward` keeps the activations in nChw16c (`thinjax.ops.infer`): oneDNN's
    convolutions with direct nChw16c kernels on this CPU, several images (one image is
    split by rows, which nChw16c does not allow) and every channel count of the plan a
    multiple of 16."""
    if (input_shape[0] < 2 or resolve(impl, jnp.float32) == "xla"
            or not blocked_kernels()):
        return False
    widths = [plan.stem_width] + [s.width for s in plan.stages] + [
        c for s in plan.stages for b in s.blocks for c in b.inner]
    return all(c % 16 == 0 for c in widths)


def _stage_of(block: str) -> int:
    """The stage index of a block named as `Plan.blocks` names it ("stage2/block0": 1)."""
    return int(block.split("/")[0].removeprefix("stage")) - 1


class _Conv(NamedTuple):
    key: str  # in the folded variables
    conv: str | None  # None for the stem
    stage: int  # the stage whose layout it computes in (the stem: the first)
    n: int
    h: int  # input size
    w: int
    ci: int
    co: int
    k: int
    stride: int


def _convs(plan: Plan, input_shape: tuple[int, ...]) -> Iterator[_Conv]:
    """Every convolution `forward` computes for NHWC input of `input_shape` (odd kernels
    with padding (k-1)/2: a stride s maps size h to ceil(h/s), as does the ImageNet stem's
    3x3/2 max-pool)."""
    n, h, w, _ = input_shape
    imagenet = plan.stem == "imagenet"
    stride = 2 if imagenet else 1
    yield _Conv("stem", None, 0, n, h, w, plan.in_channels, plan.stem_width,
                7 if imagenet else 3, stride)
    h, w = -(-h // stride), -(-w // stride)
    if imagenet:
        h, w = -(-h // 2), -(-w // 2)
    strided = 1 if plan.block == "basic" else 2  # the conv carrying the stride (v1.5)
    sizes = (3, 3) if plan.block == "basic" else (1, 3, 1)
    for name, cin, cout, s, b in plan.blocks():
        si = _stage_of(name)
        if b.proj:
            yield _Conv(name, "proj", si, n, h, w, cin, cout, 1, s)
        ih, iw, chans = h, w, (cin, *b.inner, cout)
        for k in range(0 if b.removed else len(b.inner) + 1):
            st = s if k + 1 == strided else 1
            yield _Conv(name, f"conv{k + 1}", si, n, ih, iw, chans[k], chans[k + 1],
                        sizes[k], st)
            ih, iw = -(-ih // st), -(-iw // st)
        h, w = -(-h // s), -(-w // s)


def row_stages(plan: Plan, input_shape: tuple[int, ...], impl: str = "auto"
               ) -> tuple[bool, ...]:
    """Per stage, whether `forward` computes it (the first with the stem and the ImageNet
    max-pool) on NHCW activations with thinjax's row kernels (`thinjax.ops.infer`): where
    they run here, oneDNN computes the convolutions, the activations are not nChw16c
    (`blocked`), and `conv_costs` estimates the stage's convolutions cheaper so."""
    if (resolve(impl, jnp.float32) == "xla" or not row_kernels()
            or blocked(plan, input_shape, impl)):
        return (False,) * len(plan.stages)
    costs = [[0.0, 0.0] for _ in plan.stages]
    for c in _convs(plan, tuple(input_shape)):
        dnn, row = conv_costs(c.n, -(-c.h // c.stride), -(-c.w // c.stride), c.ci, c.co, c.k,
                              c.stride, row_lanes())
        costs[c.stage][0] += dnn
        costs[c.stage][1] += row
    return tuple(row < dnn for dnn, row in costs)


def prepare(plan: Plan, folded: Mapping, input_shape: tuple[int, ...], impl: str = "auto",
            max_batch: int = MAX_BATCH) -> dict:
    """`folded` with each kernel in the layout oneDNN's inference convolution wants for
    NHWC inputs of `input_shape` passed to `forward` (`thinjax.ops.infer.kernel_layout`),
    or the row kernels' (`thinjax.ops.infer.row_block`) in `row_stages`, so that no call
    reorders it; unchanged where `impl` resolves to XLA's convolution. Pure (jit-able)."""
    if resolve(impl, jnp.float32) == "xla":
        return dict(folded)
    if _chunked(input_shape[0], max_batch, impl):  # `forward` computes it in chunks
        input_shape = (_chunk_size(input_shape[0], max_batch), *input_shape[1:])
    out = {k: dict(v) for k, v in folded.items()}
    nchw16c = blocked(plan, input_shape, impl)
    rows = row_stages(plan, input_shape, impl)
    for c in _convs(plan, tuple(input_shape)):
        f = folded[c.key] if c.conv is None else folded[c.key][c.conv]
        k = jnp.asarray(f["kernel"])
        if k.ndim == 4 and rows[c.stage]:  # HWIO, as `fold` makes it
            k = layout_kernel(k, row_block(c.co))
        elif k.ndim == 4:
            shape = ((c.n, c.ci // 16, c.h, c.w, 16) if nchw16c and c.conv is not None
                     else (c.n, c.h, c.w, c.ci))
            k = layout_kernel(k, kernel_layout(shape, c.k, c.co, c.stride, (c.k - 1) // 2))
        g = {"kernel": k, "bias": f["bias"]}
        if c.conv is None:
            out[c.key] = g
        else:
            out[c.key][c.conv] = g
    return out


def _conv(x, f: Mapping, stride: int, relu: bool, residual=None, impl: str = "auto",
          rows: bool = False):
    k = f["kernel"]
    size = k.shape[{4: 0, 5: 1, 6: 2}[k.ndim]]
    return conv2d_fused(x, k, f["bias"], stride, (size - 1) // 2, residual=residual,
                        relu=relu, impl=impl, rows=rows)


def _chunked(n: int, max_batch: int, impl: str) -> bool:
    return n > max_batch and resolve(impl, jnp.float32) != "xla"


def _chunk_size(n: int, max_batch: int) -> int:
    """The images per chunk when `forward` splits `n` into equal chunks of <= max_batch."""
    return -(-n // -(-n // max_batch))


def forward(plan: Plan, folded: Mapping, x, impl: str = "auto", max_batch: int = MAX_BATCH):
    """Logits (float32) of NHWC images `x` through `plan` with `fold`'s (or `prepare`'s)
    variables; `impl` picks the convolution as in `thinjax.ops.conv.conv2d`. With oneDNN, a
    batch of more than `max_batch` images runs in equal chunks of at most that many, one
    after another (``lax.map``; the batch padded to a multiple), so that a convolution's
    activations stay in cache: ResNet-56 w=16 at batch 500, 205-260 instead of 157 img/s
    on a 2-core AMD EPYC."""
    x = jnp.asarray(x, jnp.float32)
    n = x.shape[0]
    if _chunked(n, max_batch, impl):
        chunks, size = -(-n // max_batch), _chunk_size(n, max_batch)
        xs = jnp.pad(x, ((0, chunks * size - n),) + ((0, 0),) * 3)
        out = jax.lax.map(lambda c: _forward(plan, folded, c, impl), xs.reshape(
            chunks, size, *x.shape[1:]))
        return out.reshape(chunks * size, -1)[:n]
    return _forward(plan, folded, x, impl)


def _spatial(x, rows: bool) -> tuple[int, int]:
    """The axes of height and width: NHWC, nChw16c (5-D) or NHCW (`rows`)."""
    return (1, 3) if rows else (x.ndim - 3, x.ndim - 2)


def _forward(plan: Plan, folded: Mapping, x, impl: str):
    nchw16c = blocked(plan, x.shape, impl)
    rows = row_stages(plan, x.shape, impl)
    stride = 2 if plan.stem == "imagenet" else 1
    now = rows[0]  # the activations are NHCW
    x = _conv(to_rows(x) if now else x, folded["stem"], stride, True, impl=impl, rows=now)
    if nchw16c:
        x = to_blocked(x)
    if plan.stem == "imagenet":  # post-ReLU: padding with 0 equals padding with -inf
        window, steps, pads = [1] * x.ndim, [1] * x.ndim, [(0, 0)] * x.ndim
        for a in _spatial(x, now):
            window[a], steps[a], pads[a] = 3, 2, (1, 1)
        x = jax.lax.reduce_window(x, 0.0, jax.lax.max, window, steps, pads)
    strided = 1 if plan.block == "basic" else 2  # the conv carrying the stride (v1.5)
    for name, _, _, s, b in plan.blocks():
        want = rows[_stage_of(name)]
        if want != now:  # a stage in the other layout
            x, now = (to_rows(x) if want else from_rows(x)), want
        f = folded[name]
        shortcut = _conv(x, f["proj"], s, False, impl=impl, rows=now) if b.proj else x
        if b.removed:
            x = jax.nn.relu(shortcut)
            continue
        y, n = x, len(b.inner) + 1
        for k in range(1, n):
            y = _conv(y, f[f"conv{k}"], s if k == strided else 1, True, impl=impl, rows=now)
        x = _conv(y, f[f"conv{n}"], s if n == strided else 1, True, shortcut, impl=impl,
                  rows=now)
    x = jnp.mean(x, axis=_spatial(x, now)).reshape(x.shape[0], -1)  # nChw16c: channel order
    return x @ folded["head"]["kernel"] + folded["head"]["bias"]


def forward_fn(plan: Plan, variables: Mapping, input_shape: tuple[int, ...], eps: float = 1e-5,
               impl: str = "auto") -> Callable:
    """A jitted function NHWC float32 images -> logits for deployment: `fold` and `prepare`
    (for `input_shape`; other shapes work, their kernels may be reordered in each call)
    done once here, the result held by the function as constants."""
    prepared = jax.device_put(prepare(plan, fold(plan, variables, eps), input_shape, impl))
    return jax.jit(lambda x: forward(plan, prepared, x, impl))
