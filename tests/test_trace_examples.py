"""thinjax.trace on the example networks (thinjax.models.examples) and on a model written
from docs/prune_any_model.md alone (issue 29's must-be-true).

* Every example (MobileNetV2, ConvNeXt, U-Net, ViT; tiny widths, one 32x32 image) prunes to
  half its MACs with L1 and global allocation through ``thinjax.trace.prune``; the
  materialised network computes what the masked one (pruned channels zeroed) computes, to
  float32 rounding: the difference is at most 4 times what moving the input by one ulp
  changes in the masked network's output (measured: 0.67 to 1.71 times over three seeds of
  each model); its params and MACs are what the trace's cost model predicted, counted
  again on the materialised network's own jaxpr.
* The traced groups of MobileNetV2 (two widths), ConvNeXt and the U-Net are exactly
  Torch-Pruning's (DepGraph) on their PyTorch twins, entry by entry.
* A small VGG with an Inception-style concatenating block, written here following only
  the docs' five lines, prunes and materialises.
* docs/prune_any_model.md's table of the examples shows the numbers measured here.
"""

import os
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.helpers import ROOT
from thinjax import trace as T
from thinjax.models.examples import ConvNeXt, MobileNetV2, UNet, ViT, random_variables
from thinjax.ops.dense_conv import NAME as CONV2D
from thinjax.ops.depthwise import NAME as DEPTHWISE

X = (1, 32, 32, 3)
EXAMPLES = {"MobileNetV2": MobileNetV2(width=0.25), "ConvNeXt": ConvNeXt(width=0.125),
            "UNet": UNet(width=0.25), "ViT": ViT(width=0.5, depth=2)}
ULPS = 4.0   # |pruned - masked| <= ULPS * (the masked output's change for a 1-ulp input move)
EVAL = {"train": False}


def _image(seed=0):
    return np.random.default_rng(seed).standard_normal(X).astype(np.float32)


@pytest.fixture(scope="module")
def pruned():
    """name -> (module, variables, x, trace, pruned module, its variables, report)."""
    out = {}
    for name, m in EXAMPLES.items():
        v, x = random_variables(m, X), _image()
        small_model, small, report = T.prune(m, v, x, criterion="l1", target=0.5,
                                             target_kind="macs_fraction", allocation="global",
                                             apply_kwargs=EVAL, check=False)
        out[name] = (m, v, x, T.trace(m, v, x, **EVAL), small_model, small, report)
    return out


def _macs(closed) -> int:
    """Multiply-accumulates of every convolution and dot product in a jaxpr (nested calls
    included), counted from the shapes alone: output size times the contracted size (a
    convolution's kernel without its output axis; a depthwise one's taps)."""
    total = 0
    for eqn in closed.eqns:
        out = int(np.prod(eqn.outvars[0].aval.shape))
        if eqn.params.get("name") == DEPTHWISE:   # thinjax.ops.depthwise's shifted sum
            total += out * int(np.prod(eqn.invars[1].aval.shape[:2]))
            continue
        if eqn.params.get("name") == CONV2D:   # thinjax.ops.dense_conv: HWIO, maybe oneDNN's
            total += out * int(np.prod(eqn.invars[1].aval.shape[:3]))
            continue
        if eqn.primitive.name == "conv_general_dilated":
            rhs = eqn.invars[1].aval.shape
            total += out * int(np.prod(rhs)) // rhs[eqn.params["dimension_numbers"].rhs_spec[0]]
        elif eqn.primitive.name == "dot_general":
            (lc, _), _ = eqn.params["dimension_numbers"]
            total += out * int(np.prod([eqn.invars[0].aval.shape[a] for a in lc]))
        for p in eqn.params.values():
            inner = getattr(p, "jaxpr", p)
            if hasattr(inner, "eqns"):
                total += _macs(inner)
    return total


def _against_masked(m, v, x, tr, masks, small_model, small) -> tuple[float, float, float]:
    """(max |materialised - masked|, the masked output's change for a 1-ulp move of the
    input, max |dense - masked|) on input `x`."""
    f = jax.jit(lambda v, x: m.apply(v, x, **EVAL))
    masked = T.mask_variables(tr, masks, v)
    y_masked = np.asarray(f(masked, x))
    noise = float(np.abs(np.asarray(f(masked, np.nextafter(x, np.inf))) - y_masked).max())
    assert 0 < noise < 1e-5 * np.abs(y_masked).max()      # float32 noise, not a real change
    y_small = np.asarray(jax.jit(lambda v, x: small_model.apply(v, x, **EVAL))(small, x))
    return (float(np.abs(y_small - y_masked).max()), noise,
            float(np.abs(np.asarray(f(v, x)) - y_masked).max()))


def _count(model, variables, x) -> tuple[int, int]:
    """(params, MACs) of `model` at `variables`: leaf sizes, and `_macs` of its jaxpr."""
    params = sum(int(np.size(a)) for a in jax.tree_util.tree_leaves(variables["params"]))
    closed = jax.make_jaxpr(lambda v, x: model.apply(v, x, **EVAL))(variables, x)
    return params, _macs(closed.jaxpr)


@pytest.mark.parametrize("name", EXAMPLES)
def test_each_example_prunes_to_half_its_macs_computing_what_the_masked_one_does(pruned,
                                                                                  name):
    m, v, x, tr, small_model, small, report = pruned[name]
    assert abs(report.pruned.macs / report.dense.macs - 0.5) <= 0.002, report
    diff, noise, change = _against_masked(m, v, x, tr, report.allocation.masks,
                                          small_model, small)
    assert diff <= ULPS * noise, (diff, noise)
    assert change > 1e3 * noise    # the cut channels mattered: masking them is no no-op
    # the cost the allocator worked with is the materialised network's, counted on it
    assert (report.pruned.params, report.pruned.macs) == _count(small_model, small, x)
    assert (report.dense.params, report.dense.macs) == _count(m, v, x)
    again = T.trace(small_model, small, x, **EVAL).net(inexact=True).cost()
    assert (again.params, again.macs) == (report.pruned.params, report.pruned.macs)


def test_convnext_and_vit_reach_half_their_macs_without_their_inexact_groups(pruned):
    """LayerNorm normalises over the channels it is given, so a residual stream through
    LayerNorms (ConvNeXt's four stage streams, ViT's one) computes otherwise once some
    channels go; attention's q.k is scaled by the ``head_dim`` field, so ViT's q/k head
    dimensions too. `prune` leaves them whole (``inexact=False``) and still reaches half
    the MACs on what is exact: ConvNeXt's MLP hidden widths; ViT's heads, value dimensions
    and MLP hidden widths. Every other group of every example is pruned."""
    whole = {name: sorted(r.inexact) for name, (*_, r) in pruned.items()}
    assert whole == {"MobileNetV2": [], "UNet": [],
                     "ConvNeXt": ["stage1/down", "stage2/down", "stage3/down", "stem/conv"],
                     "ViT": ["block0/attn/q:2", "block1/attn/q:2", "patch"]}
    for name, (*_, tr, _, _, report) in pruned.items():
        assert sorted(report.kept) == sorted(set(tr.groups) - set(report.inexact)), name
        assert [r.name for r in report.refused] == ["head"] and report.unsupported == {}
    kept = pruned["ConvNeXt"][-1].kept
    assert all(kept[f"stage{s}/block0/fc1"][0] < kept[f"stage{s}/block0/fc1"][1] / 2
               for s in range(4))
    kept = pruned["ViT"][-1].kept   # 2 heads of 32: one head of block 1 goes whole
    assert kept["block1/attn/q:1"] == (1, 2) and kept["block0/attn/v:2"][0] < 32
    small = pruned["ViT"][5]["params"]["block1"]["attn"]
    assert small["q"]["kernel"].shape == (64, 1, 32) and small["out"]["kernel"].shape[0] == 1


# -- Torch-Pruning's dependency graph on the PyTorch twins ----------------------------------

def _entries(group) -> frozenset:
    """A traced group in the oracle's format: {(collection/path, axis, start, stop)}; every
    slice of these models is one contiguous run of indices (no flatten, no repeats)."""
    out = set()
    for s in group.slices:
        start = int(s.rows[0, 0])
        assert s.rows.shape[1] == 1 and np.array_equal(
            s.rows[:, 0], np.arange(start, start + group.size)), (group.name, s.path)
        out.add((f"{s.col}/{s.path}", s.axis, start, start + group.size))
    return frozenset(out)


@pytest.fixture(scope="module")
def oracle():
    pytest.importorskip("torch")
    pytest.importorskip("torch_pruning")
    import thinjax.models.examples.torch_pruning_oracle as o  # torch-pruning: test extra
    return o


@pytest.mark.parametrize("module,n", [
    (MobileNetV2(width=0.25), 23), (MobileNetV2(width=0.5), 25), (ConvNeXt(width=0.125), 8),
    (UNet(width=0.25), 17)], ids=["MobileNetV2-0.25", "MobileNetV2-0.5", "ConvNeXt", "UNet"])
def test_traced_groups_are_torch_prunings_groups(oracle, module, n):
    """Exactly the same set of groups, each the same set of (variable, axis, slice).

    `Trace.groups` holds every prunable group, exact or not (``inexact`` only chooses
    which ones the allocator gets), so ConvNeXt's four LayerNorm streams are compared too:
    Torch-Pruning prunes them, the trace finds the very same members and marks them not
    exact. Neither prunes the classifier's outputs: Torch-Pruning because the oracle
    ignores ``head`` (``ignored_layers``), the trace because they reach the network's
    output (its one refusal); both keep the classifier's input rows in the last group.
    MobileNetV2 at width 0.25 is one stream from the stem through stage 2 (8 channels
    all along at stride 1, so block0 and block1 add their inputs: 23 groups); at 0.5 the
    stem (16), stage 1 (8) and stage 2 (16) are three streams (25 groups)."""
    x = np.zeros(X, np.float32)
    tr = T.trace(module, random_variables(module, X), x, **EVAL)
    assert [r.name for r in tr.refused] == ["head"] and tr.unsupported == {}
    traced = {_entries(g) for g in tr.groups.values()}
    theirs = oracle.oracle_groups(module, X)
    assert len(traced) == len(tr.groups) == n
    assert traced == theirs, (sorted(map(sorted, traced - theirs))[:2],
                              sorted(map(sorted, theirs - traced))[:2])


# -- a model the project has never seen, written from the docs alone ------------------------

class ConvBN(nn.Module):
    features: int
    kernel: int = 3

    @nn.compact
    def __call__(self, x, train: bool):
        x = nn.Conv(self.features, (self.kernel, self.kernel), use_bias=False)(x)
        return nn.relu(nn.BatchNorm(use_running_average=not train)(x))


class InceptionBlock(nn.Module):
    """Four branches concatenated: 1x1; 1x1 then 3x3; 1x1 then two 3x3; pool then 1x1."""

    @nn.compact
    def __call__(self, x, train: bool):
        a = ConvBN(16, 1)(x, train)
        b = ConvBN(24)(ConvBN(12, 1)(x, train), train)
        c = ConvBN(8)(ConvBN(8)(ConvBN(4, 1)(x, train), train), train)
        d = ConvBN(8, 1)(nn.max_pool(x, (3, 3), padding="SAME"), train)
        return jnp.concatenate([a, b, c, d], axis=-1)


class VGGInception(nn.Module):
    num_classes: int = 10

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = ConvBN(16)(ConvBN(16)(x, train), train)
        x = ConvBN(32)(nn.max_pool(x, (2, 2), (2, 2)), train)
        x = InceptionBlock()(nn.max_pool(x, (2, 2), (2, 2)), train)
        x = nn.max_pool(x, (2, 2), (2, 2)).reshape(x.shape[0], -1)        # flatten
        x = nn.Dropout(0.5, deterministic=not train)(nn.relu(nn.Dense(64)(x)))
        return nn.Dense(self.num_classes)(x)


def test_a_vgg_written_from_the_docs_alone_prunes_and_materialises():
    # the docs' five lines, with apply_kwargs as the docs say for a `train` argument (init
    # and apply jitted: the same calls, compiled whole rather than op by op: 21 s -> 9 s here)
    model, x = VGGInception(), jnp.asarray(_image()[:, :16, :16])
    variables = jax.jit(model.init)(jax.random.PRNGKey(0), x)
    small_model, small_vars, report = T.prune(model, variables, x, criterion="l1", target=0.5,
                                              target_kind="macs_fraction",
                                              apply_kwargs={"train": False})
    print(report)
    logits = jax.jit(small_model.apply)(small_vars, x)
    assert logits.shape == (1, 10)
    # every conv and the hidden Dense is a group, all of them cut; the classes stay
    assert len(report.kept) == 11 and all(k < s for k, s in report.kept.values())
    assert [r.name for r in report.refused] == ["Dense_1"]
    assert abs(report.pruned.macs / report.dense.macs - 0.5) <= 0.01
    diff, noise, change = _against_masked(model, variables, x, T.trace(model, variables, x),
                                          report.allocation.masks, small_model, small_vars)
    assert diff <= ULPS * noise and change > 1e3 * noise and report.max_abs_diff == diff
    # the flatten: Dense_0 reads the branches' kept outputs, concatenated, at 2x2 positions
    # (linen names a module when it is built: the outer ConvBN of a chain first)
    inc = [f"InceptionBlock_0/ConvBN_{i}/Conv_0" for i in (0, 1, 3, 6)]
    assert small_vars["params"]["Dense_0"]["kernel"].shape[0] == \
        4 * sum(report.kept[g][0] for g in inc)
    assert (report.pruned.params, report.pruned.macs) == _count(small_model, small_vars, x)


# -- the docs' table --------------------------------------------------------------------------

def test_the_docs_table_shows_the_numbers_measured_here(pruned):
    with open(os.path.join(ROOT, "docs", "prune_any_model.md"), encoding="utf-8") as f:
        doc = f.read()
    for name, (*_, tr, _, _, r) in pruned.items():
        (row,) = re.findall(rf"^\| {name} .*$", doc, re.M)
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[1] == f"{len(tr.groups)} ({len(tr.groups) - len(r.inexact)} exact)", name
        assert all(f"{n} ({tr.groups[n].size}" in cells[2] for n in r.inexact) and \
            (cells[2] == "none") == (not r.inexact), name
        assert cells[3] == f"{r.dense.macs:,} → {r.pruned.macs:,}", name
        assert cells[4] == f"{r.dense.params:,} → {r.pruned.params:,}", name
