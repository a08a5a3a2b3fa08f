"""thinjax.ops.lanes: per-channel elementwise work in the lane-dense view, and what the
models and the oneDNN convolutions build on it (odd channel counts at full speed, same
numbers)."""

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from thinjax.models import resnet
from thinjax.models.batchnorm import BatchNorm
from thinjax.ops import conv, lanes
from thinjax.plan import BlockPlan, Plan, StagePlan, plan_from_width


def test_lane_factor():
    assert lanes.LANES == 8
    assert lanes.lane_factor((128, 32, 32, 13)) == 8  # 13 * 8 = 104 lanes
    assert lanes.lane_factor((128, 32, 32, 12)) == 2
    assert lanes.lane_factor((128, 32, 32, 10)) == 4
    for c in (8, 16, 24, 64):  # already whole vectors: unchanged
        assert lanes.lane_factor((4, 8, 8, c)) == 1
    assert lanes.lane_factor((2, 3, 3, 13)) == 2  # 18 pixels: only 2 divides them
    assert lanes.lane_factor((1, 7, 7, 13)) == 1
    assert lanes.lane_factor((0, 7, 7, 13)) == lanes.lane_factor((4, 7, 7, 0)) == 1
    assert lanes.lane_factor((4, 8, 8, 1)) == 1  # one channel: left as it is


@pytest.mark.parametrize("shape", [(16, 6, 6, 13), (2, 3, 3, 13), (5, 4, 4, 16), (10, 12)])
def test_lanewise_and_channel_sum_equal_the_direct_computation(shape):
    r = np.random.default_rng(0)
    x, s = (jnp.asarray(r.standard_normal(shape), jnp.float32) for _ in range(2))
    a, b = (jnp.asarray(r.standard_normal(shape[-1]), jnp.float32) for _ in range(2))

    def fn(x, s, a, b, none, scalar):
        assert none is None
        return jnp.maximum(x * a + b + s * scalar, 0)

    got = lanes.lanewise(fn, x, s, a, b, None, jnp.float32(0.5))
    assert got.shape == shape
    np.testing.assert_array_equal(got, fn(x, s, a, b, None, jnp.float32(0.5)))
    k = lanes.lane_factor(shape)
    np.testing.assert_allclose(lanes.channel_sum(lanes.to_lanes(x, k), shape[-1]),
                               x.reshape(-1, shape[-1]).sum(0), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="per-channel|broadcasting"):
        lanes.lanewise(fn, x, s, a[:-1], b, None, 1.0)


def test_per_channel_is_an_exact_tiling_whatever_the_values():
    v = jnp.asarray([1.5, -0.0, np.inf, np.nan, 3e38], jnp.float32)
    holds = [None] if conv._usable_reason(jnp.float32) else [None, conv.boundary]
    for hold in holds:
        np.testing.assert_array_equal(lanes.per_channel(v, 8, hold), np.tile(v, 8))
        np.testing.assert_array_equal(jax.jit(lambda v, h=hold: lanes.per_channel(v, 8, h))(v),
                                      np.tile(v, 8))
        g = jax.grad(lambda v, h=hold: jnp.sum(lanes.per_channel(v, 3, h) * jnp.arange(15.)))(
            jnp.ones(5))
        np.testing.assert_array_equal(g, np.arange(15.).reshape(3, 5).sum(0))
    assert lanes.per_channel(v, 1, conv.boundary) is v


def _compiled_step(model, x):
    v = model.init(jax.random.PRNGKey(0), x)

    def loss(p):
        y, _ = model.apply({"params": p, "batch_stats": v["batch_stats"]}, x, train=True,
                           mutable=["batch_stats"])
        return jnp.sum(jax.nn.log_softmax(y)[:, 0])
    return jax.jit(jax.grad(loss)).lower(v["params"]).compile().as_text()


@pytest.mark.skipif(conv._usable_reason(jnp.float32) is not None, reason="needs oneDNN")
def test_per_channel_constants_stay_out_of_the_large_fusions():
    """A 13-channel stage (lane view 8 x 13 = 104 columns): every fusion over the
    activations reads its per-channel constants as (104,) vectors computed once; none
    tiles a (13,) vector itself (the slow form: an index modulo 13 and a gather per
    element), with oneDNN's kernels (`conv.boundary` holds them)."""
    plan = Plan("basic", "cifar", 13, (StagePlan(13, 1, (BlockPlan((9,), False),)),),
                num_classes=10)
    hlo = _compiled_step(resnet.ResNet(plan, conv_impl="onednn"), jnp.zeros((8, 16, 16, 3)))
    big = [c for c in hlo.split("\n\n") if re.search(r"-> f32\[256,104\]", c.split("\n")[0])]
    assert len(big) >= 4, len(big)  # BatchNorm, ReLU, residual add: all in the lane view
    for c in big:
        assert not re.search(r"= f32\[8,13\]\{1,0\} broadcast", c), c[:600]


def _odd_plan():
    return Plan("basic", "cifar", 13, (
        StagePlan(13, 1, (BlockPlan((9,), False), BlockPlan((11,), False))),
        StagePlan(25, 2, (BlockPlan((19,), True), BlockPlan((0,), False))),
        StagePlan(41, 2, (BlockPlan((30,), True),)),
    ), num_classes=10)


@pytest.mark.parametrize("impl", ["xla", "onednn"])
def test_odd_widths_give_the_numbers_of_the_plain_layout(impl, monkeypatch):
    """Logits, loss gradients and BatchNorm statistics of a network with odd channel
    counts, train and eval mode: the lane-view model against the same model computed
    without it (lanes.LANES = 1: channel-minor arrays as they are)."""
    if impl == "onednn" and conv._usable_reason(jnp.float32):
        pytest.skip(f"oneDNN unusable here: {conv._usable_reason(jnp.float32)}")
    plan = _odd_plan()
    model = resnet.ResNet(plan, conv_impl=impl)
    x = jax.random.normal(jax.random.PRNGKey(1), (8, 32, 32, 3))
    v = model.init(jax.random.PRNGKey(0), x)

    def run(v):
        def loss(p):
            y, st = model.apply({"params": p, "batch_stats": v["batch_stats"]}, x,
                                train=True, mutable=["batch_stats"])
            return jnp.sum(jax.nn.log_softmax(y)[:, 0]), st
        (l, st), g = jax.jit(jax.value_and_grad(loss, has_aux=True))(v["params"])
        return jax.jit(model.apply)(v, x), l, g, st

    got = run(v)
    monkeypatch.setattr(lanes, "LANES", 1)
    assert lanes.lane_factor((8, 32, 32, 13)) == 1
    want = run(v)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got[1], want[1], rtol=1e-5)
    for a, b in zip(jax.tree.leaves(got[2:]), jax.tree.leaves(want[2:])):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * max(1.0, np.abs(b).max()))


@pytest.mark.parametrize("shape", [(16, 6, 6, 13), (2, 3, 3, 13), (3, 5, 5, 13)])
def test_batchnorm_with_odd_channels_matches_flax(shape):
    kw = dict(use_running_average=False, momentum=0.9, epsilon=1e-5)
    ref, new = nn.BatchNorm(use_fast_variance=False, **kw), BatchNorm(**kw)
    r = np.random.default_rng(3)
    x = jnp.asarray(r.standard_normal(shape) * 3 + 5, jnp.float32)
    w = jnp.asarray(r.standard_normal(shape), jnp.float32)
    v = ref.init(jax.random.PRNGKey(0), x)
    v = {"params": {"scale": jnp.asarray(r.uniform(0.5, 1.5, shape[-1]), jnp.float32),
                    "bias": jnp.asarray(r.standard_normal(shape[-1]), jnp.float32)},
         "batch_stats": v["batch_stats"]}

    def loss(m, p, x):
        y, st = m.apply({"params": p, "batch_stats": v["batch_stats"]}, x,
                        mutable=["batch_stats"])
        return jnp.sum(jnp.sin(y) * w) + jnp.sum(st["batch_stats"]["var"] ** 2), st

    (l1, s1), g1 = jax.value_and_grad(lambda p, x: loss(ref, p, x), (0, 1), True)(v["params"], x)
    (l2, s2), g2 = jax.value_and_grad(lambda p, x: loss(new, p, x), (0, 1), True)(v["params"], x)
    np.testing.assert_allclose(l1, l2, rtol=1e-5)
    for a, b in zip(jax.tree.leaves((g1, s1)), jax.tree.leaves((g2, s2))):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    e1 = ref.clone(use_running_average=True).apply(s1 | {"params": v["params"]}, x)
    e2 = new.clone(use_running_average=True).apply(s2 | {"params": v["params"]}, x)
    np.testing.assert_allclose(e1, e2, rtol=1e-5, atol=1e-5)


def _largest_fusion_inputs(hlo: str) -> int:
    comps = [c for c in hlo.split("\n\n") if not c.lstrip().startswith("ENTRY")]
    return max(len(re.findall(r"parameter\(", c)) for c in comps)


@pytest.mark.skipif(conv._usable_reason(jnp.float32) is not None, reason="needs oneDNN")
def test_evaluation_graph_computes_each_block_once():
    """ResNet-56 inference: XLA turns the fusion barrier's division into a multiplication
    there, and without the boundary each block's fusion recomputed the stage's whole
    residual chain (fusions reading 59 arrays); with it every fusion reads a handful."""
    plan = plan_from_width("resnet56", 4, 10)
    x = jnp.zeros((4, 32, 32, 3))
    for impl, most in (("onednn", 16), ("xla", None)):
        m = resnet.ResNet(plan, conv_impl=impl)
        v = m.init(jax.random.PRNGKey(0), x[:1])
        n = _largest_fusion_inputs(jax.jit(m.apply).lower(v, x).compile().as_text())
        if most:
            assert n <= most, n
        else:  # XLA's convolutions: no boundary, and the pathology is still there
            assert n >= 30, n
