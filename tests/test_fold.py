"""thinjax.models.fold and the fused inference convolution (thinjax.ops.infer.conv2d_fused):
BatchNorm folded into the convolutions gives the model's own logits.

Tolerances are measured: over ResNet-20 w=4, the irregular plan, ResNet-18 w=8 (ImageNet
stem) and ResNet-50 w=16 (bottleneck) with random variables, batches of 1 and 5, with and
without channel masks, the folded logits differed from ``ResNet.apply`` (XLA's
convolutions) by at most 4.2e-7 of the largest logit (XLA's or oneDNN's convolutions in the
folded network alike), and ``ResNet.apply`` with oneDNN's convolutions differed from it by
up to 3.6e-7: the folded network is as close to the model as the model's two convolution
implementations are to each other. The tests allow 2e-6 (the release ResNet-56 w=16 in
deploy_speed.py: 2-4e-6, against onnxruntime too).
"""

import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.helpers import BUILDABLE, irregular_plan, random_masks
from thinjax import evaluation
from thinjax.interop.export import jitted_forward
from thinjax.models import fold
from thinjax.models.resnet import ResNet, random_variables
from thinjax.ops import conv, infer
from thinjax.plan import BlockPlan, Plan, StagePlan, plan_from_width

needs_onednn = pytest.mark.skipif(not BUILDABLE, reason="oneDNN kernels build on Linux x86-64 "
                                                        "with a C++ compiler only")
TOL = 2e-6
PLANS = {"resnet20_w4": lambda: plan_from_width("resnet20", 4),
         "irregular": irregular_plan,
         "resnet18_w8": lambda: plan_from_width("resnet18", 8, 10),
         "resnet50_w16": lambda: plan_from_width("resnet50", 16, 10, base_width=64)}


def images(plan, n, seed=0):
    size = 64 if plan.stem == "imagenet" else 32
    return jnp.asarray(np.random.default_rng(seed).standard_normal((n, size, size, 3)),
                       jnp.float32)


def model_logits(plan, v, x, masks=None):
    return np.asarray(jax.jit(lambda v, x, m: ResNet(plan, conv_impl="xla").apply(
        v, x, masks=m))(v, x, masks))


def rel_err(got, want):
    return float(np.max(np.abs(np.asarray(got) - want)) / np.max(np.abs(want)))


@pytest.mark.parametrize("name", PLANS)
@pytest.mark.parametrize("impl", ["xla", pytest.param("onednn", marks=needs_onednn)])
def test_folded_logits_are_the_models(name, impl):
    plan = PLANS[name]()
    v = random_variables(plan, seed=1)
    run = jax.jit(lambda v, x, m: fold.forward(plan, fold.fold(plan, v, masks=m), x, impl))
    for n, masks in ((5, None), (1, random_masks(plan, np.random.default_rng(3)))):
        x = images(plan, n, seed=n)
        want = model_logits(plan, v, x, masks)
        assert rel_err(run(v, x, masks), want) < TOL, (n, masks is not None)
    if impl == "onednn":  # the fused custom calls, not XLA's convolution
        hlo = run.lower(v, x, None).as_text()
        assert "thinjax_onednn_conv_infer_add" in hlo and "convolution(" not in hlo


def test_fold_is_exact_on_one_convolution():
    r = np.random.default_rng(0)
    k = r.standard_normal((3, 3, 4, 6)).astype(np.float32)
    bn = {"scale": r.uniform(0.5, 2, 6), "bias": r.standard_normal(6)}
    stats = {"mean": r.standard_normal(6), "var": r.uniform(0.5, 2, 6)}
    mask = np.array([1, 0, 1, 1, 0, 1], np.float32)
    f = fold.fold_conv(k, bn, stats, 1e-5, mask)
    s = bn["scale"] / np.sqrt(stats["var"] + 1e-5)
    np.testing.assert_allclose(f["kernel"], k * s * mask, rtol=1e-6)
    np.testing.assert_allclose(f["bias"], (bn["bias"] - stats["mean"] * s) * mask, rtol=1e-6,
                               atol=1e-7)
    assert not np.any(f["kernel"][..., 1]) and f["bias"][4] == 0  # masked channels vanish


def test_a_fully_masked_block_is_the_identity_as_in_the_model():
    plan = plan_from_width("resnet20", 4)
    v = random_variables(plan, seed=2)
    masks = random_masks(plan, np.random.default_rng(0), p_drop_block=0)
    masks["stage2/block1/conv1"][:] = 0  # the block's branch is gone
    x = images(plan, 2)
    got = jax.jit(lambda v, x: fold.forward(plan, fold.fold(plan, v, masks=masks), x))(v, x)
    assert rel_err(got, model_logits(plan, v, x, masks)) < TOL


def mixed_plan():
    """Stage 2 on the row kernels where they run (9 to 13 channels at 16x16: AVX-512's and
    AVX2's cost models alike), stages 1 and 3 on oneDNN's (32 channels at 32x32; 41, 50
    and 12 at 8x8: padded kernels)."""
    return Plan("basic", "cifar", 32, (
        StagePlan(32, 1, (BlockPlan((32,)),)),
        StagePlan(13, 2, (BlockPlan((9,), True), BlockPlan((10,)))),
        StagePlan(41, 2, (BlockPlan((50,), True), BlockPlan((12,))))), num_classes=5)


@needs_onednn
@pytest.mark.parametrize("n", [1, 3])
def test_prepared_kernels_change_nothing_but_the_layout(n):
    plan = mixed_plan()
    v = random_variables(plan, seed=4)
    x = images(plan, n)
    rows = infer.row_kernels()
    assert fold.row_stages(plan, x.shape, "onednn") == (False, rows, False)
    folded = fold.fold(plan, v)
    prepared = jax.device_put(fold.prepare(plan, folded, x.shape, "onednn"))
    before = jax.tree.map(np.array, prepared)
    k = prepared["stage3/block1"]["conv1"]["kernel"]  # 41 to 12 channels at 8x8
    assert k.ndim in (5, 6)  # (co/B, kh, kw, ci, B) or (co/16, ci/16, kh, kw, 16, 16)
    row_kernel = prepared["stage2/block1"]["conv1"]["kernel"]  # 13 to 10 channels
    assert row_kernel.shape == (1, 3, 3, 13, 10) if rows else row_kernel.ndim in (5, 6)
    run = jax.jit(lambda f, x: fold.forward(plan, f, x, "onednn"))
    np.testing.assert_array_equal(run(prepared, x), run(folded, x))  # the same primitives
    for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(prepared)):
        np.testing.assert_array_equal(a, b)  # oneDNN never writes the caller's kernels
    np.testing.assert_array_equal(infer.unlayout_kernel(k, 12, 41),
                                  folded["stage3/block1"]["conv1"]["kernel"])
    assert rel_err(run(prepared, x), model_logits(plan, v, x)) < TOL


# (batch, size, in channels, out channels, kernel, stride): batch 1 is split by output rows
# over the inference threads, larger batches by images; channels that are multiples of 16
# are also tried in nChw16c (16 to 16 channels: the NHWC kernels on the same bytes)
GEOMETRIES = [(1, 8, 16, 16, 3, 1), (1, 15, 5, 7, 3, 2), (3, 9, 6, 11, 1, 2),
              (1, 20, 3, 8, 7, 2), (2, 7, 12, 24, 1, 1), (5, 32, 16, 16, 3, 1),
              (3, 8, 32, 32, 3, 1), (2, 9, 16, 32, 3, 2), (2, 8, 32, 64, 1, 2)]


@needs_onednn
@pytest.mark.parametrize("geom", GEOMETRIES, ids=lambda g: "b{}s{}c{}-{}k{}st{}".format(*g))
def test_fused_convolution_matches_xla(geom):
    n, size, ci, co, k, stride = geom
    r = np.random.default_rng(sum(geom))
    x = jnp.asarray(r.standard_normal((n, size, size, ci)), jnp.float32)
    w = jnp.asarray(r.standard_normal((k, k, ci, co)) / np.sqrt(k * k * ci), jnp.float32)
    b = jnp.asarray(r.standard_normal(co), jnp.float32)
    pad = (k - 1) // 2
    out = conv.xla_conv2d(x, w, stride, pad).shape
    res = jnp.asarray(r.standard_normal(out), jnp.float32)
    fn = jax.jit(lambda x, kk, b, r, relu, imp: infer.conv2d_fused(x, kk, b, stride, pad, r,
                                                                  relu, imp),
                 static_argnames=("relu", "imp"))
    layouts = [(lambda a: a, lambda a: a)]
    if ci % 16 == 0 and co % 16 == 0 and infer.blocked_kernels():  # AVX-512 only
        layouts.append((infer.to_blocked, infer.from_blocked))
    for to, back in layouts:
        code = infer.kernel_layout(to(x).shape, k, co, stride, pad)
        assert code != 0  # a layout oneDNN names: prepared kernels are not reordered
        for kernel in (w, infer.layout_kernel(w, code)):
            for residual, relu in ((None, False), (None, True), (res, True), (res, False)):
                r = None if residual is None else to(residual)
                got = back(fn(to(x), kernel, b, r, relu, "onednn"))
                want = fn(x, w, b, residual, relu, "xla")
                scale = float(jnp.max(jnp.abs(want)))
                assert float(jnp.max(jnp.abs(got - want))) <= 2e-6 * scale + 1e-7
    assert "thinjax_onednn_conv_infer" in fn.lower(x, w, b, res, True, "onednn").as_text()


@needs_onednn
@pytest.mark.parametrize("geom", GEOMETRIES + [(2, 16, 13, 10, 3, 1), (1, 33, 9, 25, 3, 2),
                                  (2, 16, 7, 49, 3, 1)],
                         ids=lambda g: "b{}s{}c{}-{}k{}st{}".format(*g))
def test_row_convolution_matches_xla(geom):
    """The row kernels on NHCW activations (`rows=True`): batch 1 split by output rows,
    widths under, at and over a vector of 16, 32 and 48 pixels, padding rows and columns,
    strides 1 and 2, kernels 1, 3 and 7 wide. Measured: at most 7e-7 of the largest
    output from XLA's convolution (7.3e-7 with the AVX2 kernels, on an AMD EPYC Zen 3)."""
    if not infer.row_kernels():
        pytest.skip("the row kernels need an AVX-512 or AVX2 CPU")
    n, size, ci, co, k, stride = geom
    r = np.random.default_rng(sum(geom) + 1)
    x = jnp.asarray(r.standard_normal((n, size, size + 17, ci)), jnp.float32)  # not square
    w = jnp.asarray(r.standard_normal((k, k, ci, co)) / np.sqrt(k * k * ci), jnp.float32)
    b = jnp.asarray(r.standard_normal(co), jnp.float32)
    pad = (k - 1) // 2
    res = jnp.asarray(r.standard_normal(conv.xla_conv2d(x, w, stride, pad).shape), jnp.float32)
    fn = jax.jit(lambda x, kk, b, r, relu, imp, rows: infer.conv2d_fused(
        x, kk, b, stride, pad, r, relu, imp, rows), static_argnames=("relu", "imp", "rows"))
    packed = infer.layout_kernel(w, infer.row_block(co))  # as `prepare` lays it out
    assert packed.shape[0] == -(-co // 16) and packed.shape[-1] <= 16
    for (residual, relu), kernel in zip(((None, False), (None, True), (res, True),
                                         (res, False)), (w, packed, w, packed)):
        r = None if residual is None else infer.to_rows(residual)
        got = infer.from_rows(fn(infer.to_rows(x), kernel, b, r, relu, "onednn", True))
        want = fn(x, w, b, residual, relu, "xla", False)
        scale = float(jnp.max(jnp.abs(want)))
        assert float(jnp.max(jnp.abs(got - want))) <= 2e-6 * scale + 1e-7
    assert "rows = 1" in fn.lower(infer.to_rows(x), w, b, None, True, "onednn", True).as_text()


@needs_onednn
def test_batches_of_multiple_of_16_networks_run_in_nchw16c():
    plan = plan_from_width("resnet20", 16)  # 16, 32, 64 channels
    v = random_variables(plan, seed=7)
    x = images(plan, 3)
    if not infer.blocked_kernels():  # no nChw16c kernels here (AVX2): activations stay NHWC
        assert not fold.blocked(plan, x.shape)
        f = fold.prepare(plan, fold.fold(plan, v), x.shape)
        assert rel_err(jax.jit(lambda f, x: fold.forward(plan, f, x))(f, x),
                       model_logits(plan, v, x)) < TOL
        return
    assert fold.blocked(plan, x.shape) and not fold.blocked(plan, (1, 32, 32, 3))
    assert not fold.blocked(irregular_plan(), x.shape)
    prepared = fold.prepare(plan, fold.fold(plan, v), x.shape)
    assert prepared["stage2/block1"]["conv1"]["kernel"].shape == (2, 2, 3, 3, 16, 16)
    assert prepared["stage1/block1"]["conv1"]["kernel"].ndim == 5  # 16 to 16: NHWC's
    run = jax.jit(lambda f, x: fold.forward(plan, f, x))
    assert rel_err(run(prepared, x), model_logits(plan, v, x)) < TOL
    assert "tensor<3x2x16x16x16xf32>" in run.lower(prepared, x).as_text()  # nChw16c


@needs_onednn
def test_large_batches_run_in_chunks_with_the_same_logits():
    plan = plan_from_width("resnet20", 4)
    v = random_variables(plan, seed=8)
    x = images(plan, 70)  # over MAX_BATCH: 2 chunks of 35
    run = jax.jit(lambda v, x: fold.forward(plan, fold.fold(plan, v), x))
    got = run(v, x)
    assert got.shape == (70, 10) and rel_err(got, model_logits(plan, v, x)) < TOL
    assert "stablehlo.while" in run.lower(v, x).as_text()
    prepared = fold.prepare(plan, fold.fold(plan, v), x.shape)  # laid out for the chunks
    assert rel_err(jax.jit(lambda f, x: fold.forward(plan, f, x))(prepared, x),
                   model_logits(plan, v, x)) < TOL


@needs_onednn
def test_concurrent_callers_get_their_own_results():
    plan = plan_from_width("resnet20", 4)
    v = random_variables(plan, seed=5)
    run = fold.forward_fn(plan, v, (1, 32, 32, 3), impl="onednn")
    xs = [images(plan, 1, seed=s) for s in range(4)]
    want = [model_logits(plan, v, x) for x in xs]
    errors = []

    def work(i):
        for _ in range(10):
            errors.append(rel_err(run(xs[i]), want[i]))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(errors) == 40 and max(errors) < TOL


def test_evaluation_and_export_use_the_folded_network():
    plan = plan_from_width("resnet20", 4)
    v = random_variables(plan, seed=6)
    x = images(plan, 4)
    want = model_logits(plan, v, x)
    assert rel_err(jitted_forward(plan)(v, x), want) < TOL
    assert rel_err(fold.forward_fn(plan, v, x.shape)(x), want) < TOL
    batch = {"image": x, "label": jnp.asarray(np.argmax(want, 1)), "mask": jnp.ones(4)}
    out = evaluation.eval_step(v, batch, model=ResNet(plan))
    assert float(out["top1"]) == 4 and float(out["count"]) == 4
    hlo = evaluation.eval_step.lower(v, batch, model=ResNet(plan)).as_text()
    assert "thinjax_onednn_conv_infer" in hlo or not BUILDABLE
    # bfloat16 models are not folded (folding would round differently): the model runs
    m16 = ResNet(plan, dtype=jnp.bfloat16)
    got16 = jax.jit(lambda v, x: evaluation.inference_logits(m16, v, x))(v, x)
    np.testing.assert_array_equal(got16, jax.jit(lambda v, x: m16.apply(v, x))(v, x))


def test_the_cost_model_picks_the_row_kernels_where_onednn_leaves_lanes_idle():
    """Measured on an AMD EPYC (one core, batch 64, ms, oneDNN and rows): 13 to 11 channels
    at 32x32, 2.37 and 1.66; 25 to 19 at 16x16, 1.98 and 1.27; 32 to 32 at 16x16, 2.70
    and 2.80; 41 to 49 at 8x8, oneDNN 1.41 (rows: half of each vector idle)."""
    def rows_cheaper(*geom):
        dnn, row = infer.conv_costs(*geom)
        return row < dnn
    assert rows_cheaper(64, 32, 32, 13, 11, 3, 1) and rows_cheaper(64, 16, 16, 25, 19, 3, 1)
    assert not rows_cheaper(64, 16, 16, 32, 32, 3, 1)
    assert not rows_cheaper(64, 8, 8, 41, 49, 3, 1)


def test_the_avx2_cost_model_picks_the_faster_kernels_of_measured_layers():
    """On AVX2 (8-wide vectors in both; `conv_costs(..., lanes=8)`). Measured on an AMD EPYC
    Zen 3 (one core, batch 64, us, oneDNN and rows; `benchmarks/infer_layers.py --layers`):
    13 to 11 channels at 32x32, 4,233 and 2,881; 25 to 22 at 16x16, 3,290 and 2,162; 16 to 15
    at 16x16, 1,750 and 1,113; 25 to 24 at 16x16, 1,909 and 2,345; 8 to 8 at 32x32, 1,326
    and 1,648; 16 to 16 at 16x16, 921 and 1,304; 32 to 32 at 8x8, 859 and 996; 16 to 16 at
    stride 2 to 16x16, 1,526 and 2,203."""
    def rows_cheaper(*geom):
        dnn, row = infer.conv_costs(*geom, lanes=8)
        return row < dnn
    for ci, co, size in ((13, 11, 32), (25, 22, 16), (16, 15, 16)):
        assert rows_cheaper(64, size, size, ci, co, 3, 1), (ci, co, size)
    for ci, co, size in ((25, 24, 16), (8, 8, 32), (16, 16, 16), (32, 32, 8)):
        assert not rows_cheaper(64, size, size, ci, co, 3, 1), (ci, co, size)
    assert not rows_cheaper(64, 16, 16, 16, 16, 3, 2)


@needs_onednn
def test_odd_channel_networks_run_on_the_row_kernels_where_they_pay():
    plan = plan_from_width("resnet20", 5)  # 5, 10 and 20 channels at 32, 16 and 8 pixels
    v = random_variables(plan, seed=9)
    x = images(plan, 3)
    rows, lanes8 = infer.row_kernels(), infer.row_lanes() == 8
    # 20 channels at 8x8: AVX2's 8-pixel rows fill their vectors, AVX-512's 16 do not
    assert fold.row_stages(plan, x.shape, "onednn") == (rows, rows, lanes8)
    assert fold.row_stages(plan, x.shape, "xla") == (False, False, False)
    wide = plan_from_width("resnet20", 16)
    if fold.blocked(wide, x.shape):  # nChw16c (oneDNN's AVX-512 kernels) first
        assert fold.row_stages(wide, x.shape) == (False,) * 3
    run = jax.jit(lambda v, x: fold.forward(plan, fold.fold(plan, v), x, "onednn"))
    for n in (1, 3):  # one image: split by output rows
        assert rel_err(run(v, x[:n]), model_logits(plan, v, x[:n])) < TOL
    hlo = run.lower(v, x).as_text()
    assert ("rows = 1" in hlo) == rows and ("rows = 0" in hlo) == (not lanes8)
    plan = plan_from_width("resnet18", 5, 10)  # the ImageNet stem and max-pool on rows
    v = random_variables(plan, seed=10)
    x = images(plan, 2)
    stages = fold.row_stages(plan, x.shape, "onednn")  # stage 2: rows on AVX2 (8 lanes)
    assert stages[0] == rows and stages[1] == (infer.row_lanes() == 8) and not any(stages[2:])
    assert rel_err(jax.jit(lambda v, x: fold.forward(plan, fold.fold(plan, v), x, "onednn"))(
        v, x), model_logits(plan, v, x)) < TOL
