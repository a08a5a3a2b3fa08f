"""thinjax.trace on flax.nnx modules: groups traced from ``nnx.merge(graphdef, state)(x)``,
pruned into a smaller NNX module by surgery on a copy of its modules.

Oracles: every NNX model here has a linen twin (the same layers under the same names), and
with the same arrays the two compute the same outputs; the traced groups are the twin's,
member by member, and pruning gives the NNX model exactly the arrays linen pruning gives
the twin. The pruned NNX module computes what the masked one does (float32 rounding), its
params and MACs are those the Report predicted (counted again on it, and by hand for the
CNN), and the user's module is left as it was.
"""

import os
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from tests.helpers import ROOT, assert_report_as_shown
from thinjax import trace as T
from thinjax.errors import TraceError
from thinjax.prune.spec import PruneSpec
from thinjax.trace.rebuild import LAYERS

# |pruned - masked| relative to the outputs' size (float32 sums in another order):
# measured up to 3.9e-7 on these models (5 seeds each); as tests/test_trace.py
RTOL = 1e-5


# -- a CNN: BatchNorm, a residual add, a concatenation, depthwise, a flatten ---------------

class CNN(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        conv = lambda i, o, k, **kw: nnx.Conv(i, o, (k, k), rngs=rngs, **kw)  # noqa: E731
        self.stem, self.stem_bn = conv(3, 8, 3), nnx.BatchNorm(8, rngs=rngs)
        self.c1, self.bn1 = conv(8, 12, 3, use_bias=False), nnx.BatchNorm(12, rngs=rngs)
        self.c2, self.bn2 = conv(12, 8, 3, use_bias=False), nnx.BatchNorm(8, rngs=rngs)
        self.dw = conv(12, 12, 3, feature_group_count=12)     # depthwise
        self.a, self.b = conv(8, 6, 1), conv(8, 5, 3)
        self.mix = conv(11, 10, 3, strides=2)
        self.fc = nnx.Linear(10 * 4 * 4, 3, rngs=rngs)

    def __call__(self, x):
        x = nnx.relu(self.stem_bn(self.stem(x)))
        y = nnx.relu(self.dw(nnx.relu(self.bn1(self.c1(x)))))
        x = nnx.relu(x + self.bn2(self.c2(y)))
        x = jnp.concatenate([nnx.relu(self.a(x)), nnx.relu(self.b(x))], axis=-1)
        x = nnx.relu(self.mix(x))
        return self.fc(x.reshape(x.shape[0], -1))


class LinenCNN(nn.Module):
    @nn.compact
    def __call__(self, x):
        bn = lambda name: nn.BatchNorm(use_running_average=True, name=name)  # noqa: E731
        x = nn.relu(bn("stem_bn")(nn.Conv(8, (3, 3), name="stem")(x)))
        y = nn.relu(bn("bn1")(nn.Conv(12, (3, 3), use_bias=False, name="c1")(x)))
        y = nn.relu(nn.Conv(12, (3, 3), feature_group_count=12, name="dw")(y))
        x = nn.relu(x + bn("bn2")(nn.Conv(8, (3, 3), use_bias=False, name="c2")(y)))
        x = jnp.concatenate([nn.relu(nn.Conv(6, (1, 1), name="a")(x)),
                             nn.relu(nn.Conv(5, (3, 3), name="b")(x))], axis=-1)
        x = nn.relu(nn.Conv(10, (3, 3), strides=2, name="mix")(x))
        return nn.Dense(3, name="fc")(x.reshape(x.shape[0], -1))


# -- a transformer block: LayerNorm, multi-head attention, an MLP ---------------------------

class Block(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.embed = nnx.Linear(5, 16, rngs=rngs)
        self.ln1, self.ln2 = nnx.LayerNorm(16, rngs=rngs), nnx.LayerNorm(16, rngs=rngs)
        self.attn = nnx.MultiHeadAttention(num_heads=4, in_features=16, decode=False,
                                           rngs=rngs)
        self.fc1, self.fc2 = nnx.Linear(16, 32, rngs=rngs), nnx.Linear(32, 16, rngs=rngs)
        self.head = nnx.Linear(16, 3, rngs=rngs)

    def __call__(self, x):
        x = self.embed(x)
        x = x + self.attn(self.ln1(x))
        x = x + self.fc2(nnx.gelu(self.fc1(self.ln2(x))))
        return self.head(x.mean(axis=1))


class LinenBlock(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.Dense(16, name="embed")(x)
        x = x + nn.MultiHeadDotProductAttention(num_heads=4, name="attn")(
            nn.LayerNorm(name="ln1")(x))
        x = x + nn.Dense(16, name="fc2")(nn.gelu(nn.Dense(32, name="fc1")(
            nn.LayerNorm(name="ln2")(x))))
        return nn.Dense(3, name="head")(x.mean(axis=1))


MODELS = {"cnn": (CNN, LinenCNN, (1, 8, 8, 3)), "block": (Block, LinenBlock, (1, 6, 5))}


def _setup(name, seed=0):
    """(NNX model with random arrays, in eval mode; its linen twin; the arrays as a
    variables tree; an input): scales and variances in [0.5, 1.5], the rest N(0, 0.5^2)."""
    cls, twin, shape = MODELS[name]
    r = np.random.default_rng(seed)

    def f(path, x):
        if str(path[-1].key) in ("scale", "var"):
            return r.uniform(0.5, 1.5, np.shape(x)).astype(np.float32)
        return (0.5 * r.standard_normal(np.shape(x))).astype(np.float32)
    model = cls(nnx.Rngs(0))
    v = jax.tree_util.tree_map_with_path(f, T.variables_of(model))
    x = jnp.asarray(r.standard_normal(shape), jnp.float32)
    model = T.nnx_rebuild.with_variables(model, v)
    model.eval()                                  # as the twin: running statistics
    return model, twin(), v, x


def _close(a, b):
    np.testing.assert_allclose(a, b, rtol=0, atol=RTOL * float(np.abs(b).max()))


def _snapshot(model):
    """Every array and every int or tuple attribute of every module, by path."""
    arrays = {k: np.asarray(x) for k, x in jax.tree_util.tree_leaves_with_path(
        T.variables_of(model))}
    attrs = {(p, k): v for p, m in nnx.iter_modules(model) for k, v in vars(m).items()
             if isinstance(v, (int, tuple))}
    return arrays, attrs


def _same(a, b):
    assert a[1] == b[1] and a[0].keys() == b[0].keys()
    assert all(np.array_equal(a[0][k], b[0][k]) for k in a[0])


def _describe(g):
    rows = {(s.path, s.axis): s.rows.tolist() for s in g.slices}
    return (g.kind, g.size, g.exact, sorted(g.producers), sorted(g.consumers),
            sorted(g.kernel_axes), rows)


# -- the oracle: the linen twin -------------------------------------------------------------

@pytest.mark.parametrize("name", MODELS)
def test_nnx_groups_are_those_of_the_linen_twin(name):
    model, twin, v, x = _setup(name)
    np.testing.assert_array_equal(model(x), twin.apply(v, x))   # one model, two APIs
    tr, lin = T.trace_nnx(model, x), T.trace(twin, v, x)
    assert tr.leaves == lin.leaves and tr.unsupported == lin.unsupported == {}
    assert list(tr.groups) == [n for n in lin.groups if n in tr.groups]
    assert all(_describe(g) == _describe(lin.groups[n]) for n, g in tr.groups.items())
    assert tr.net(True).cost() == lin.net(True).cost()
    # NNX's attention calls jax.nn.dot_product_attention (one head size for q, k and v):
    # its head sizes stay whole, with that reason; everything else is the twin's
    extra = {r.name: r.reasons[0] for r in tr.refused} .keys() - {r.name for r in lin.refused}
    want = {"attn/query:2", "attn/value:2"} if name == "block" else set()
    assert extra == want == lin.groups.keys() - tr.groups.keys()
    assert all("head size of nnx.MultiHeadAttention" in r.reasons[0]
               for r in tr.refused if r.name in want)
    if name == "cnn":
        g = tr.groups
        assert list(g) == ["stem", "c1", "a", "b", "mix"]
        assert {"stem/kernel", "c2/kernel"} == set(g["stem"].kernels)  # the residual add
        assert set(g["c1"].kernels) == {"c1/kernel", "dw/kernel"}      # depthwise: tied
        np.testing.assert_array_equal(g["b"].rows("mix/kernel", 2)[:, 0], np.arange(6, 11))
        np.testing.assert_array_equal(g["mix"].rows("fc/kernel", 0),   # the flatten
                                      np.arange(10)[:, None] + 10 * np.arange(16)[None, :])


def _cnn_cost(small):
    """Params and MACs of the CNN counted by hand from its kernels (8x8 input; `mix` and
    so the flatten at 4x4)."""
    macs = sum(hw * int(np.prod(getattr(small, n).kernel.shape)) for n, hw in (
        ("stem", 64), ("c1", 64), ("dw", 64), ("c2", 64), ("a", 64), ("b", 64), ("mix", 16),
        ("fc", 1)))
    return _params(small), macs


def _params(model):
    return sum(int(np.size(p)) for p in jax.tree_util.tree_leaves(nnx.state(model, nnx.Param)))


@pytest.mark.parametrize("name", MODELS)
def test_half_the_macs_pruned_computes_what_the_masked_model_does(name):
    model, twin, v, x = _setup(name)
    before = _snapshot(model)
    small, report = T.prune_nnx(model, x, criterion="l1", target=0.5,
                                target_kind="macs_fraction", allocation="global")
    assert abs(report.pruned.macs / report.dense.macs - 0.5) <= 0.01
    _same(before, _snapshot(model))                           # the user's module as it was
    tr = T.trace_nnx(model, x)
    want = T.mask_nnx(tr, report.allocation.masks, model)(x)
    _close(small(x), want)
    assert report.max_abs_diff <= RTOL * float(np.abs(want).max())
    params = _params(small)
    again = T.trace_nnx(small, x).net(True).cost()            # its own jaxpr
    assert (again.params, again.macs) == (params, report.pruned.macs) \
        == (report.pruned.params, report.pruned.macs)
    # linen pruning of the twin, on the groups NNX prunes, slices the very same arrays
    lin = T.trace(twin, v, x)
    spec = PruneSpec(criterion="l1", target_kind="macs_fraction", target=0.5)
    alloc = T.compute_masks(T.TracedNet(lin, {n: lin.groups[n] for n in report.kept}), v,
                            spec, spec.goal())
    assert {n: int(m.sum()) for n, m in alloc.masks.items()} \
        == {n: k for n, (k, _) in report.kept.items()}
    _, lsmall = T.materialize(lin, alloc.masks, v)
    got, ref = (jax.tree_util.tree_leaves_with_path(t) for t in (T.variables_of(small),
                                                                  lsmall))
    assert [k for k, _ in got] == [k for k, _ in ref]
    assert all(np.array_equal(a, b) for (_, a), (_, b) in zip(got, ref))
    if name == "cnn":
        assert (report.pruned.params, report.pruned.macs) == _cnn_cost(small)
        k = report.kept
        assert (small.mix.in_features, small.fc.in_features) == (
            k["a"][0] + k["b"][0], 16 * k["mix"][0])
        assert small.bn1.num_features == small.c1.out_features == k["c1"][0] \
            == small.dw.feature_group_count == small.dw.in_features < 12
    else:
        h, hidden = report.kept["attn/query:1"][0], report.kept["fc1"][0]
        assert h < 4 and (small.attn.num_heads, small.attn.qkv_features) == (h, 4 * h)
        assert small.attn.out.kernel.shape == (h, 4, 16) and small.fc2.in_features == hidden
        assert "embed" in report.inexact       # the LayerNorm stream: left whole


def test_train_mode_is_kept_and_the_pruned_model_trains():
    model, _, _, x = _setup("cnn")
    model.train()
    small, report = T.prune_nnx(model, x, target=0.5)
    assert not small.bn1.use_running_average and not model.bn1.use_running_average
    mean = np.asarray(small.bn1.mean[...])
    y = small(jnp.concatenate([x, 2 * x]))                     # batch statistics
    assert y.shape == (2, 3) and mean.shape == (report.kept["c1"][0],)
    assert not np.allclose(small.bn1.mean[...], mean)          # updated in place


# -- the other layers: surgery gives what their constructors build -----------------------

class Layers(nnx.Module):
    """Embed, Einsum, LinearGeneral both ways, a 1-D conv, GroupNorm with a group per
    channel (exact: statistics over positions), a transposed conv; widths as fields."""

    def __init__(self, rngs: nnx.Rngs, d=8, h=12, g=(2, 5), c=6, u=4):
        self.embed = nnx.Embed(11, d, rngs=rngs)
        self.mix = nnx.Einsum("btd,dh->bth", (d, h), (h,), rngs=rngs)
        self.gen = nnx.LinearGeneral(h, g, rngs=rngs)
        self.back = nnx.LinearGeneral(g, d, axis=(-2, -1), rngs=rngs)
        self.conv = nnx.Conv(d, c, (3,), rngs=rngs)
        self.gn = nnx.GroupNorm(c, num_groups=c, rngs=rngs)
        self.up = nnx.ConvTranspose(c, u, (2,), strides=(2,), rngs=rngs)
        self.head = nnx.Linear(u, 3, rngs=rngs)

    def __call__(self, ids):
        x = self.embed(ids)
        x = x + self.back(nnx.relu(self.gen(nnx.gelu(self.mix(x)))))
        x = self.up(nnx.relu(self.gn(self.conv(x))))
        return self.head(x.mean(axis=1))


def test_every_layers_width_attributes_are_what_its_constructor_sets():
    model, ids = Layers(nnx.Rngs(0)), jnp.asarray([[1, 5, 7, 2, 3, 9]])
    r = np.random.default_rng(0)
    model = T.nnx_rebuild.with_variables(model, jax.tree_util.tree_map(
        lambda a: (0.5 * r.standard_normal(np.shape(a))).astype(np.float32),
        T.variables_of(model)))
    small, report = T.prune_nnx(model, ids, target=0.5)
    k = {n: kept for n, (kept, _) in report.kept.items()}
    assert sorted(report.kept) == ["back", "conv", "gen:1", "gen:2", "mix", "up"]
    fresh = Layers(nnx.Rngs(0), k["back"], k["mix"], (k["gen:1"], k["gen:2"]), k["conv"],
                   k["up"])
    assert _snapshot(small)[1] == _snapshot(fresh)[1] != _snapshot(model)[1]
    assert jax.tree_util.tree_map(np.shape, T.variables_of(small)) \
        == jax.tree_util.tree_map(np.shape, T.variables_of(fresh))
    _close(small(ids), T.mask_nnx(T.trace_nnx(model, ids), report.allocation.masks,
                                  model)(ids))
    assert report.pruned == T.trace_nnx(small, ids).net().cost()


# -- what is refused, and says so -----------------------------------------------------------

class LayerScale(nnx.Module):
    def __init__(self, dim: int):
        self.dim = dim                                         # width-dependent state
        self.gamma = nnx.Param(jnp.ones(dim))

    def __call__(self, x):
        return x * self.gamma[...].reshape(self.dim)


class Scaled(nnx.Module):
    def __init__(self, rngs: nnx.Rngs, hard_coded: bool = False):
        self.fc1, self.ls = nnx.Linear(4, 8, rngs=rngs), LayerScale(8)
        self.fc2 = nnx.Linear(8, 2, rngs=rngs)
        self.hard_coded = hard_coded

    def __call__(self, x):
        y = self.ls(nnx.relu(self.fc1(x)))
        return self.fc2(y.reshape(1, 8) if self.hard_coded else y)


def test_a_layer_of_your_own_stays_whole_until_registered():
    model, x = Scaled(nnx.Rngs(0)), jnp.ones((1, 4))
    tr = T.trace_nnx(model, x)
    why = next(r.reasons[0] for r in tr.refused if r.name == "fc1")
    assert why.startswith("params/ls/gamma belongs to LayerScale, whose width attributes")
    assert "register_layer" in why and not tr.groups
    with pytest.raises(TraceError, match="nothing to prune"):
        T.prune_nnx(model, x)
    T.register_layer(LayerScale)                 # registered, but `dim` is not updated
    try:
        with pytest.raises(TraceError, match="fails on the example input"):
            T.prune_nnx(model, x, target=0.6)
        T.register_layer(LayerScale, lambda m, shapes: {"dim": shapes["gamma"][1][0]})
        small, report = T.prune_nnx(model, x, target=0.6)
        k = report.kept["fc1"][0]
        assert k < 8 and small.ls.dim == k == small.ls.gamma.shape[0] and model.ls.dim == 8
        with pytest.raises(TraceError, match="fails on the example input"):
            T.prune_nnx(Scaled(nnx.Rngs(0), hard_coded=True), x, target=0.6)
    finally:
        del LAYERS[LayerScale]


def test_bad_requests_are_refused_with_one_line():
    model, twin, v, x = _setup("cnn")
    for call, says in (
            (lambda: T.prune_nnx(twin, x), "give a flax.nnx Module"),
            (lambda: T.prune(model, v, x), "prune_nnx"),
            (lambda: T.prune_nnx(model, x, momentum=0.9), "not an option of prune_nnx"),
            (lambda: T.prune_nnx(model, jnp.ones((1, 8, 8, 4))), "tracing CNN")):
        with pytest.raises(TraceError, match=says):
            call()


def test_the_documented_nnx_example_runs_and_prints_what_the_docs_show():
    with open(os.path.join(ROOT, "docs", "prune_any_model.md"), encoding="utf-8") as f:
        doc = f.read().split("## NNX modules", 1)[1].split("\n## ", 1)[0]
    code = re.findall(r"```python\n(.*?)```", doc, re.S)[0]
    shown = re.findall(r"```text\n(.*?)```", doc, re.S)[0]
    scope: dict = {}
    exec(compile(code, "docs/prune_any_model.md", "exec"), scope)
    assert_report_as_shown(str(scope["report"]), shown)
    k = scope["report"].kept
    assert scope["y"].shape == (1, 10) and scope["model"].head.in_features == 16 * 16 * 16
    assert scope["small"].head.in_features == 16 * 16 * (k["a"][0] + k["b"][0])
