"""thinjax.trace: channel groups traced from a linen module's computation.

Oracles: on thinjax's ResNets the traced groups are the plan's groups and traced pruning
slices bit-identical variables; on hand-written Flax models (an Inception-style CNN with a
flatten classifier, inverted residuals with depthwise convs and squeeze-excitation, a
LayerNorm MLP block, a scan over identical blocks, multi-head attention) the pruned network
computes what the masked one does and costs what an independent count says.
"""

import os
import re

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.helpers import ROOT, assert_report_as_shown, irregular_plan
from thinjax import trace as T
from thinjax.cost import count
from thinjax.errors import TargetError, TraceError
from thinjax.models.resnet import ResNet, random_variables
from thinjax.plan import BlockPlan, Plan, StagePlan, plan_from_width
from thinjax.prune.criteria import score_groups
from thinjax.prune.groups import channel_groups, flatten
from thinjax.prune.materialize import materialize as plan_materialize
from thinjax.prune.pruner import compute_masks as plan_masks
from thinjax.prune.spec import PruneSpec
from thinjax.trace.rebuild import LAYERS

BOTTLENECK = Plan("bottleneck", "cifar", 8, (
    StagePlan(16, 1, (BlockPlan((4, 4), True), BlockPlan((0, 0)), BlockPlan((3, 5)))),
    StagePlan(24, 2, (BlockPlan((6, 2), True),)),
), num_classes=4)
PLANS = {"resnet20": plan_from_width("resnet20", 4), "irregular": irregular_plan(),
         "bottleneck": BOTTLENECK}
# |pruned - masked| relative to the outputs' size: float32 sums in another order; measured
# up to 1.3e-5 / 21 = 6e-7 on these models
RTOL = 1e-5


def _image(shape, seed=0):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def _setup(model, shape, seed=0):
    """An input and random variables for `model` (shapes from an abstract init): scales
    and variances in [0.5, 1.5], the rest N(0, 0.5^2) (zero biases would tie channels)."""
    x, r = _image(shape, seed), np.random.default_rng(seed)

    def f(path, s):
        if str(path[-1].key) in ("scale", "var"):
            return r.uniform(0.5, 1.5, s.shape).astype(np.float32)
        return (0.5 * r.standard_normal(s.shape)).astype(np.float32)
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), x)
    return x, jax.tree_util.tree_map_with_path(f, shapes)


def _close(a, b):
    """Equal to float32 rounding, relative to the size of the outputs."""
    np.testing.assert_allclose(a, b, rtol=0, atol=RTOL * float(np.abs(b).max()))


def _pm(cost):
    return cost.params, cost.macs


def _members(g):
    return sorted(g.producers + g.consumers)


# -- thinjax's ResNets: the plan is the oracle ---------------------------------------------

@pytest.mark.parametrize("name", PLANS)
def test_traced_groups_are_the_plans_groups(name):
    plan = PLANS[name]
    tr = T.trace(ResNet(plan), random_variables(plan), _image((1, 32, 32, 3)))
    planned = list(channel_groups(plan).values())
    traced = list(tr.groups.values())
    assert [_members(g) for g in traced] == [_members(g) for g in planned]  # same order
    assert [g.kind for g in traced] == [g.kind for g in planned]
    assert all(g.exact for g in traced) and tr.unsupported == {}
    assert [r.name for r in tr.refused] == ["head"]    # the classes reach the output
    assert _pm(tr.net().cost()) == _pm(count(plan, 32))


@pytest.mark.parametrize("name,spec", [
    ("resnet20", PruneSpec(criterion="l1", target_kind="macs_fraction", target=0.5)),
    ("irregular", PruneSpec(criterion="l1", target_kind="macs_fraction", target=0.5)),
    ("bottleneck", PruneSpec(criterion="l1", target_kind="macs_fraction", target=0.5)),
    ("resnet20", PruneSpec(criterion="l2", allocation="uniform", round_to=2,
                           target_kind="params_fraction", target=0.6)),
])
def test_traced_pruning_is_bit_identical_to_plan_pruning(name, spec):
    plan = PLANS[name]
    model, v, x = ResNet(plan), random_variables(plan), _image((1, 32, 32, 3))
    alloc = plan_masks(plan, v, spec, spec.goal(), input_size=32)
    new_plan, planned = plan_materialize(plan, alloc.masks, v)
    tr = T.trace(model, v, x)
    talloc = T.compute_masks(tr.net(), v, spec, spec.goal())
    small_model, traced = T.materialize(tr, talloc.masks, v)
    a, b = flatten(planned), flatten(traced)
    assert a.keys() == b.keys()
    assert all(a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]) for k in a)
    c = count(new_plan, 32)
    assert (talloc.params, talloc.macs) == (c.params, c.macs) and new_plan != plan
    if name == "irregular":     # the rebuilt module computes what the plan's model does
        np.testing.assert_array_equal(jax.jit(small_model.apply)(traced, x),
                                      jax.jit(ResNet(new_plan).apply)(planned, x))


# -- a model thinjax has never seen: Inception-style block, flatten, Dense classifier ----

class Inception(nn.Module):
    @nn.compact
    def __call__(self, x):
        a = nn.relu(nn.BatchNorm(use_running_average=True, name="a_bn")(
            nn.Conv(6, (1, 1), name="a")(x)))
        b = nn.relu(nn.Conv(4, (1, 1), name="b1")(x))
        b = nn.relu(nn.Conv(8, (3, 3), name="b2")(b))
        c = nn.Conv(5, (1, 1), name="c")(nn.max_pool(x, (3, 3), padding="SAME"))
        return jnp.concatenate([a, b, c], axis=-1)


class SmallVGG(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.BatchNorm(use_running_average=True, name="bn1")(
            nn.Conv(8, (3, 3), name="conv1")(x)))
        x = nn.max_pool(nn.relu(nn.Conv(12, (3, 3), name="conv2")(x)), (2, 2), (2, 2))
        x = Inception(name="inc")(x)
        x = nn.relu(nn.Conv(10, (3, 3), strides=2, name="conv3")(x))
        x = nn.relu(nn.Dense(16, name="fc1")(x.reshape(x.shape[0], -1)))
        return nn.Dense(3, name="fc2")(x)


def _vgg_cost(p):
    """Params and MACs of SmallVGG from its kernels' shapes, counted by hand (16x16 input:
    convs at 16, the block at 8, conv3 at 4)."""
    macs = 0
    for name, hw in (("conv1", 16), ("conv2", 16), ("inc/a", 8), ("inc/b1", 8), ("inc/b2", 8),
                     ("inc/c", 8), ("conv3", 4), ("fc1", 1), ("fc2", 1)):
        macs += hw * hw * int(np.prod(flatten(p)[f"{name}/kernel"].shape))
    return sum(int(np.size(x)) for x in flatten(p).values()), macs


def test_inception_groups_follow_concatenation_and_flatten():
    x, v = _setup(SmallVGG(), (1, 16, 16, 3))
    tr = T.trace(SmallVGG(), v, x)
    g = tr.groups
    assert list(g) == ["conv2", "conv1", "inc/a", "inc/b1", "inc/b2", "inc/c", "conv3", "fc1"]
    assert g["conv2"].kind == "stream"      # a fork: three branches read it
    assert sorted(g["conv2"].consumers) == [("inc/a/kernel", 2), ("inc/b1/kernel", 2),
                                            ("inc/c/kernel", 2)]
    assert sorted(g["conv1"].producers) == [("bn1/bias", 0), ("bn1/mean", 0), ("bn1/scale", 0),
                                            ("bn1/var", 0), ("conv1/bias", 0),
                                            ("conv1/kernel", 3)]
    # the concatenation: conv3's input rows are a (0..5), b2 (6..13), c (14..18)
    np.testing.assert_array_equal(g["inc/b2"].rows("conv3/kernel", 2)[:, 0], np.arange(6, 14))
    np.testing.assert_array_equal(g["inc/c"].rows("conv3/kernel", 2)[:, 0], np.arange(14, 19))
    assert g["inc/a"].rows("conv3/kernel", 2) is None
    # the flatten: channel c of conv3 is row 10 * position + c of fc1's kernel
    np.testing.assert_array_equal(g["conv3"].rows("fc1/kernel", 0),
                                  np.arange(10)[:, None] + 10 * np.arange(16)[None, :])
    assert [r.name for r in tr.refused] == ["fc2"] and tr.unsupported == {}
    assert _pm(tr.net().cost()) == _vgg_cost(v["params"])


def test_inception_prunes_to_half_its_macs_in_five_lines():
    x, v = _setup(SmallVGG(), (1, 16, 16, 3))
    model, small, report = T.prune(SmallVGG(), v, x, criterion="l1", target=0.5,
                                   target_kind="macs_fraction")
    assert abs(report.pruned.macs / report.dense.macs - 0.5) <= 0.01
    masked = T.mask_variables(T.trace(SmallVGG(), v, x), report.allocation.masks, v)
    want = jax.jit(SmallVGG().apply)(masked, x)
    _close(jax.jit(model.apply)(small, x), want)
    assert 0 < report.max_abs_diff <= RTOL * np.abs(want).max()
    assert _pm(report.pruned) == _vgg_cost(small["params"])               # by hand
    assert _pm(T.trace(model, small, x).net().cost()) == _pm(report.pruned)  # re-traced
    assert "pruned 8 of 8 channel groups" in str(report)


def test_criteria_score_traced_members_through_their_index_maps():
    x, v = _setup(SmallVGG(), (1, 16, 16, 3))
    net = T.trace(SmallVGG(), flax.core.freeze(v), x).net()
    inputs = T.api.TracedScoreInputs(net, v, members="all")
    got = score_groups(inputs, "group_norm")["conv3"]
    p = v["params"]   # by hand: conv3's filters, then fc1's rows 10 * position + channel
    want = (p["conv3"]["kernel"].astype(np.float64) ** 2).sum((0, 1, 2)) \
        + (p["fc1"]["kernel"].astype(np.float64) ** 2).reshape(16, 10, 16).sum((0, 2))
    np.testing.assert_allclose(got, np.sqrt(want), rtol=1e-12)


@pytest.mark.parametrize("allocation,kind,target,round_to", [
    ("uniform", "ratio", 0.5, 2), ("global", "params_fraction", 0.6, 1),
    ("uniform", "macs", 150_000, 1)])
def test_every_allocation_and_target_kind_on_traced_groups(allocation, kind, target, round_to):
    x, v = _setup(SmallVGG(), (1, 16, 16, 3))
    tr = T.trace(SmallVGG(), v, x)
    spec = PruneSpec(criterion="l2", allocation=allocation, target_kind=kind, target=target,
                     round_to=round_to)
    alloc = T.compute_masks(tr.net(), v, spec, spec.goal())
    kept = {n: int(m.sum()) for n, m in alloc.masks.items()}
    sizes = {n: g.size for n, g in tr.groups.items()}
    assert all(k % round_to == 0 or k == sizes[n] for n, k in kept.items())
    if kind == "ratio":   # uniform: every group keeps half, to the nearest even count
        assert kept == {"conv2": 6, "conv1": 4, "inc/a": 4, "inc/b1": 2, "inc/b2": 4,
                        "inc/c": 4, "conv3": 4, "fc1": 8}
    else:
        dense = tr.net().cost()
        want = target * dense.params if kind == "params_fraction" else target
        assert abs((alloc.params if kind != "macs" else alloc.macs) - want) <= 0.01 * want
    _, small = T.materialize(tr, alloc.masks, v)
    assert (alloc.params, alloc.macs) == _vgg_cost(small["params"])


# -- depthwise convs, squeeze-excitation, remat and jit ------------------------------------

class SE(nn.Module):
    @nn.compact
    def __call__(self, x):
        s = nn.relu(nn.Conv(4, (1, 1), name="reduce")(jnp.mean(x, (1, 2), keepdims=True)))
        return x * nn.sigmoid(nn.Conv(x.shape[-1], (1, 1), name="expand")(s))


class InvertedResidual(nn.Module):
    out: int
    expand: int
    residual: bool = True    # a field, not `out == x.shape[-1]`: widths change when pruned

    @nn.compact
    def __call__(self, x):
        c = x.shape[-1] * self.expand
        bn = lambda name: nn.BatchNorm(use_running_average=True, name=name)  # noqa: E731
        y = jax.nn.relu6(bn("bn1")(nn.Conv(c, (1, 1), use_bias=False, name="pw")(x)))
        y = nn.Conv(c, (3, 3), feature_group_count=c, use_bias=False, name="dw")(y)
        y = SE(name="se")(jax.nn.relu6(bn("bn2")(y)))
        y = bn("bn3")(nn.Conv(self.out, (1, 1), use_bias=False, name="pwl")(y))
        return x + y if self.residual else y


class MobileNetish(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = jax.nn.relu6(nn.Conv(8, (3, 3), strides=2, name="stem")(x))
        x = InvertedResidual(8, 3, name="b1")(x)
        x = nn.remat(InvertedResidual)(8, 2, name="b2")(x)
        x = jax.jit(lambda t: t * 1.0)(x)
        x = InvertedResidual(12, 2, False, name="b3")(x)
        return nn.Dense(3, name="head")(jnp.mean(x, axis=(1, 2)))


def test_depthwise_convs_tie_their_channels_through_remat_and_jit():
    x, v = _setup(MobileNetish(), (1, 16, 16, 3))
    tr = T.trace(MobileNetish(), v, x)
    assert tr.unsupported == {} and [r.name for r in tr.refused] == ["head"]
    g = tr.groups["b2/pw"]    # inside nn.remat: expansion, depthwise, SE gate tied
    assert sorted(g.kernel_axes) == [("b2/dw/kernel", 3), ("b2/pw/kernel", 3),
                                     ("b2/se/expand/kernel", 3)]
    assert sorted(g.consumers) == [("b2/pwl/kernel", 2), ("b2/se/reduce/kernel", 2)]
    stem = tr.groups["stem"]  # the residual stream through b1 and b2
    assert {"b1/pwl/kernel", "b2/pwl/kernel", "stem/kernel"} <= set(stem.kernels)
    model, small, report = T.prune(MobileNetish(), v, x, target=0.5)
    kept = report.kept["b1/pw"][0]
    assert kept < 24 and small["params"]["b1"]["dw"]["kernel"].shape == (3, 3, 1, kept)
    assert abs(report.pruned.macs / report.dense.macs - 0.5) <= 0.01
    masked = T.mask_variables(tr, report.allocation.masks, v)
    _close(jax.jit(model.apply)(small, x), jax.jit(MobileNetish().apply)(masked, x))


# -- LayerNorm: prunable, but not exact -----------------------------------------------------

class LayerScale(nn.Module):
    @nn.compact
    def __call__(self, x):
        return x * self.param("gamma", nn.initializers.ones, (x.shape[-1],))


class NextBlock(nn.Module):
    @nn.compact
    def __call__(self, x):
        c = x.shape[-1]
        y = nn.LayerNorm(name="ln")(nn.Conv(c, (3, 3), feature_group_count=c, name="dw")(x))
        y = nn.Dense(c, name="fc2")(nn.gelu(nn.Dense(4 * c, name="fc1")(y)))
        return x + LayerScale(name="ls")(y)


class ConvNeXtish(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.LayerNorm(name="stem_ln")(nn.Conv(8, (2, 2), strides=2, name="stem")(x))
        x = NextBlock(name="b2")(NextBlock(name="b1")(x))
        return nn.Dense(3, name="head")(nn.LayerNorm(name="ln")(jnp.mean(x, axis=(1, 2))))


def test_layernorm_streams_are_inexact_and_custom_layers_need_registering():
    x, v = _setup(ConvNeXtish(), (1, 8, 8, 3))
    tr = T.trace(ConvNeXtish(), v, x)
    assert "stem" not in tr.groups and tr.groups["b1/fc1"].exact
    why = next(r for r in tr.refused if r.name == "stem").reasons[0]
    assert "LayerScale" in why and "register_layer" in why
    T.register_layer(LayerScale)      # gamma's shape follows the input
    try:
        tr = T.trace(ConvNeXtish(), v, x)
        stem = tr.groups["stem"]
        assert not stem.exact and "reduces over channels" in stem.notes[0]
        assert {"b1/dw/kernel", "b2/ls/gamma", "stem_ln/scale"} <= {p for p, _ in stem.producers}
        # outputs of size ~1 (after a LayerNorm): prune's own check, pruned vs masked
        _, _, report = T.prune(ConvNeXtish(), v, x, target=0.6)
        assert "stem" not in report.kept and "stem" in report.inexact
        assert report.kept["b1/fc1"][0] < 32 and report.max_abs_diff < 1e-5
        _, _, report = T.prune(ConvNeXtish(), v, x, target=0.6, inexact=True)
        assert report.kept["stem"][0] < 8 and report.max_abs_diff > 1e-3
    finally:
        del LAYERS[LayerScale]


# -- a scan over identical blocks, multi-head attention -------------------------------------

class ScanBlock(nn.Module):
    @nn.compact
    def __call__(self, x, _):
        y = nn.relu(nn.Dense(12, name="fc1")(x))
        return x + nn.Dense(x.shape[-1], name="fc2")(y), None


class Scanned(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.Dense(6, name="inp")(x)
        x, _ = nn.scan(ScanBlock, variable_axes={"params": 0}, split_rngs={"params": True},
                       length=3)(name="blocks")(x, None)
        return nn.Dense(2, name="head")(x)


def test_a_scan_shares_channels_across_its_iterations():
    x, v = _setup(Scanned(), (1, 5, 4))
    tr = T.trace(Scanned(), v, x)
    assert sorted(tr.groups["inp"].kernel_axes) == [("blocks/fc2/kernel", 2), ("inp/kernel", 1)]
    assert sorted(tr.groups["blocks/fc1"].producers) == [("blocks/fc1/bias", 1),
                                                         ("blocks/fc1/kernel", 2)]
    assert tr.net().cost().macs == 5 * (4 * 6 + 3 * (6 * 12 + 12 * 6) + 6 * 2)  # 5 tokens
    model, small, report = T.prune(Scanned(), v, x, target=0.5)
    assert small["params"]["blocks"]["fc1"]["kernel"].shape == (3,) + tuple(
        report.kept[n][0] for n in ("inp", "blocks/fc1"))
    masked = T.mask_variables(tr, report.allocation.masks, v)
    _close(jax.jit(model.apply)(small, x), jax.jit(Scanned().apply)(masked, x))


class Attention(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.Dense(16, name="embed")(x)
        x = x + nn.MultiHeadDotProductAttention(num_heads=4, name="attn")(x)
        return nn.Dense(3, name="head")(x.mean(axis=1))


def test_attention_heads_are_a_group_and_head_dims_inexact():
    x, v = _setup(Attention(), (1, 6, 5))
    tr = T.trace(Attention(), v, x)
    heads, qk, vdim = (tr.groups[n] for n in ("attn/query:1", "attn/query:2", "attn/value:2"))
    assert heads.size == 4 and sorted(heads.kernel_axes) == [
        ("attn/key/kernel", 1), ("attn/query/kernel", 1), ("attn/value/kernel", 1)]
    assert heads.consumers == (("attn/out/kernel", 0),) and heads.exact and vdim.exact
    assert not qk.exact and "contracts two activations" in qk.notes[0]
    model, small, report = T.prune(Attention(), v, x, target=0.5)
    e, h, d = (report.kept[n][0] for n in ("embed", "attn/query:1", "attn/value:2"))
    assert h < 4 and small["params"]["attn"]["value"]["kernel"].shape == (e, h, d)
    assert small["params"]["attn"]["query"]["kernel"].shape == (e, h, 4)
    assert small["params"]["attn"]["out"]["kernel"].shape == (h, d, e)
    masked = T.mask_variables(tr, report.allocation.masks, v)
    _close(jax.jit(model.apply)(small, x), jax.jit(Attention().apply)(masked, x))


class UNetish(nn.Module):
    @nn.compact
    def __call__(self, x):
        e1 = nn.relu(nn.Conv(6, (3, 3), name="e1")(x))
        e2 = nn.relu(nn.Conv(10, (3, 3), strides=2, name="e2")(e1))
        u = jax.image.resize(e2, (x.shape[0], 8, 8, e2.shape[-1]), "nearest")   # a gather
        t = nn.ConvTranspose(5, (2, 2), strides=(2, 2), name="up")(e2)
        d = nn.relu(nn.Conv(7, (3, 3), name="d1")(jnp.concatenate([e1, u, t], -1)))
        return nn.Conv(2, (1, 1), name="out")(d)


def test_skip_concatenation_and_upsampling_of_a_unet():
    x, v = _setup(UNetish(), (1, 8, 8, 3))
    tr = T.trace(UNetish(), v, x)
    g = tr.groups
    assert sorted(g) == ["d1", "e1", "e2", "up"] and tr.unsupported == {}
    assert sorted(g["e2"].consumers) == [("d1/kernel", 2), ("up/kernel", 2)]
    np.testing.assert_array_equal(g["e2"].rows("d1/kernel", 2)[:, 0], np.arange(6, 16))
    np.testing.assert_array_equal(g["up"].rows("d1/kernel", 2)[:, 0], np.arange(16, 21))
    model, small, report = T.prune(UNetish(), v, x, target=0.5)
    masked = T.mask_variables(tr, report.allocation.masks, v)
    _close(jax.jit(model.apply)(small, x), jax.jit(UNetish().apply)(masked, x))


class Tokens(nn.Module):
    @nn.compact
    def __call__(self, ids):
        x = nn.Embed(11, 8, name="embed")(ids)
        x = x + nn.Dense(8, name="fc2")(nn.relu(nn.Dense(16, name="fc1")(x)))
        return nn.Dense(2, name="head")(x.mean(axis=1))


def test_an_embedding_table_joins_the_residual_stream():
    ids = jnp.asarray([[1, 5, 7, 2]])
    v = Tokens().init(jax.random.PRNGKey(0), ids)
    tr = T.trace(Tokens(), v, ids)
    assert sorted(tr.groups["fc2"].producers) == [("embed/embedding", 1), ("fc2/bias", 0),
                                                  ("fc2/kernel", 1)]
    model, small, report = T.prune(Tokens(), v, ids, target=0.5)
    assert small["params"]["embed"]["embedding"].shape == (11, report.kept["fc2"][0])
    masked = T.mask_variables(tr, report.allocation.masks, v)
    _close(jax.jit(model.apply)(small, ids), jax.jit(Tokens().apply)(masked, ids))


# -- what the trace refuses, and says so ---------------------------------------------------

class Odd(nn.Module):
    @nn.compact
    def __call__(self, x):
        a = nn.GroupNorm(num_groups=2, name="gn")(nn.Conv(4, (3, 3), name="g")(x))
        b = jnp.sort(nn.Conv(6, (3, 3), name="s")(x), axis=-1)
        c = nn.Conv(8, (3, 3), name="sl")(x)[..., :5]
        d = nn.relu(nn.Conv(4, (3, 3), name="ok")(x))
        y = nn.Conv(7, (3, 3), name="mix")(jnp.concatenate([a, b, c, d], axis=-1))
        return nn.Dense(2, name="head")(jnp.mean(y, axis=(1, 2)))


def test_what_the_trace_cannot_follow_stays_whole_and_is_named():
    x, v = _setup(Odd(), (1, 8, 8, 3))
    model, small, report = T.prune(Odd(), v, x, target=0.7)
    assert sorted(report.kept) == ["mix", "ok"]
    why = {r.name: r.reasons[0] for r in report.refused}
    assert "splits a channel axis of size 4 into (2, 2)" in why["g"]
    assert why["s"].startswith("sort in Odd: not followed") and "sort" in report.unsupported
    assert "a slice of a channel axis" in why["sl"]
    assert "left whole: g (4): reshape in Odd/gn" in str(report)
    assert small["params"]["mix"]["kernel"].shape[2] == 4 + 6 + 5 + report.kept["ok"][0]


class Rescaled(nn.Module):
    reshape: bool = False

    @nn.compact
    def __call__(self, x):
        x = nn.Conv(8, (3, 3), name="c1")(x)
        x = x.reshape(1, -1, 8) if self.reshape else x * (8.0 / x.shape[-1])
        return nn.Dense(2, name="head")(jnp.mean(x, axis=tuple(range(1, x.ndim - 1))))


@pytest.mark.parametrize("reshape,says", [(False, "differs from the masked"),
                                          (True, "fails on the example input")])
def test_a_width_hard_coded_in_the_model_is_caught(reshape, says):
    x, v = _setup(Rescaled(reshape), (1, 4, 4, 3))
    with pytest.raises(TraceError, match=says):
        T.prune(Rescaled(reshape), v, x, target=0.5)


def test_bad_requests_are_refused_with_one_line():
    x, v = _setup(SmallVGG(), (1, 16, 16, 3))
    for kwargs, error, says in (
            ({"criterion": "taylor"}, TraceError, "needs the masked model's forward pass"),
            ({"momentum": 0.9}, TraceError, "not an option of prune"),
            ({"target": 1.0}, TargetError, "removes no channel"),
            ({"target": 1e-4}, TargetError, "unreachable")):
        with pytest.raises(error, match=says):
            T.prune(SmallVGG(), v, x, **kwargs)
    with pytest.raises(TraceError, match="give a flax.linen Module"):
        T.trace(lambda v, x: x, v, x)
    with pytest.raises(TraceError, match="nothing to prune"):
        T.prune(nn.Dense(3), {"params": {"kernel": np.ones((4, 3)), "bias": np.ones(3)}},
                jnp.ones((1, 4)))


def test_the_documented_example_runs_and_prints_what_the_docs_show():
    with open(os.path.join(ROOT, "docs", "prune_any_model.md"), encoding="utf-8") as f:
        doc = f.read()
    code = re.findall(r"```python\n(.*?)```", doc, re.S)[0]
    shown = re.findall(r"```text\n(.*?)```", doc, re.S)[0]
    scope: dict = {}
    exec(compile(code, "docs/prune_any_model.md", "exec"), scope)
    assert_report_as_shown(str(scope["report"]), shown)
    assert scope["logits"].shape == (1, 10)
