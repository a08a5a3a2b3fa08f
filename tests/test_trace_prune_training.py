"""Training-time pruning on traced groups: what the training loop does with a network's
masks (zeroing, soft events, the regularisers' penalties, Taylor and HRank scores), on
traced groups as on plan groups; every criterion, allocation and target kind on an example
network's traced groups, one-shot and on top of earlier masks.

Oracle: on thinjax's ResNets the traced groups are the plan's groups (tests/test_trace.py),
in the same order, so every operation on the traced network (`thinjax.trace.networks.
TracedNetwork` works on any traced module) must give the plan's numbers: masked trees and
soft events bit for bit, penalties and Taylor scores to float32 rounding, Taylor's masks
exactly; HRank's scores for the inner groups, whose feature maps are the same (a stream's
sites differ: the plan reads block outputs, the trace each producer's BatchNorm).
The whole loop on an example network: tests/test_trace_train.py."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.helpers import irregular_plan
from thinjax import trace as T
from thinjax.cost import Cost, count
from thinjax.errors import TraceError
from thinjax.models.examples import random_variables as example_variables
from thinjax.models.resnet import ResNet, random_variables
from thinjax.plan import plan_from_width
from thinjax.prune import criteria, regularize
from thinjax.prune.allocate import Target
from thinjax.prune.groups import channel_groups, mask_tree
from thinjax.prune.pruner import compute_masks as plan_compute_masks
from thinjax.prune.soft import soft_event
from thinjax.prune.spec import PruneSpec
from thinjax.trace import masking, scores
from thinjax.trace.example import example_net
from thinjax.trace.networks import network

PLANS = {"resnet20": plan_from_width("resnet20", 4), "irregular": irregular_plan()}


@pytest.fixture(scope="module", params=list(PLANS))
def both(request):
    """(plan, variables, traced net, {plan group name: traced group name}, batches)."""
    plan = PLANS[request.param]
    v = random_variables(plan)
    net = T.trace(ResNet(plan), v, jnp.zeros((1, 32, 32, 3))).net()
    names = dict(zip(channel_groups(plan), net.groups, strict=True))
    r = np.random.default_rng(1)
    batches = [{"image": jnp.asarray(r.standard_normal((8, 32, 32, 3)), jnp.float32),
                "label": jnp.asarray(r.integers(0, plan.num_classes, 8))} for _ in range(2)]
    return plan, v, net, names, batches


def _masks(plan, seed=0):
    """Random keep-masks (about 60% kept, channel 0 always)."""
    r, out = np.random.default_rng(seed), {}
    for n, g in channel_groups(plan).items():
        m = (r.random(g.size) < 0.6).astype(np.float32)
        m[0] = 1.0
        out[n] = m
    return out


def _renamed(d: dict, names: dict) -> dict:
    return {names[k]: v for k, v in d.items()}


def _equal(a, b) -> bool:
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    return len(la) == len(lb) and all(np.array_equal(np.asarray(x), np.asarray(y))
                                      for x, y in zip(la, lb))


def test_masks_and_soft_events_act_as_on_the_plan(both):
    plan, v, net, names, _ = both
    masks = _masks(plan)
    axes = masking.leaf_axes(net.groups)
    for col in ("params", "batch_stats"):   # jitted, as in the train step
        traced = jax.jit(functools.partial(masking.mask_tree, axes))(v[col],
                                                                     _renamed(masks, names))
        assert _equal(traced, mask_tree(plan, v[col], masks))
    assert _equal(masking.mask_tree(axes, v["params"], _renamed(masks, names)),
                  mask_tree(plan, v["params"], masks))          # numpy, on the host
    assert _equal(soft_event(net, v["params"], _renamed(masks, names)),
                  soft_event(plan, v["params"], masks))


def test_regularisers_penalise_traced_channels_as_plan_channels(both):
    plan, v, net, names, _ = both
    masks = _masks(plan, 2)
    norms = jax.jit(lambda p: regularize.channel_sq_norms(p, plan))(v["params"])
    traced = jax.jit(lambda p: regularize.channel_sq_norms(p, net))(v["params"])
    for n, t in names.items():
        np.testing.assert_allclose(traced[t], norms[n], rtol=1e-6)
    for kind in ("group_lasso", "greg"):
        spec = PruneSpec(regularizer=kind, reg_strength=1e-3, greg_step=0.01, greg_every=2)
        want = jax.jit(functools.partial(regularize.penalty, plan=plan, cfg_prune=spec,
                                         step=7))(v["params"], masks=masks)
        got = jax.jit(functools.partial(regularize.penalty, plan=net, cfg_prune=spec,
                                        step=7))(v["params"], masks=_renamed(masks, names))
        np.testing.assert_allclose(got, want, rtol=1e-6)
        assert want > 0


def test_taylor_on_traced_groups_gives_the_plans_masks(both):
    plan, v, net, names, batches = both
    spec = PruneSpec(criterion="taylor", taylor_batches=2, target_kind="macs_fraction",
                     target=0.5)
    want = plan_compute_masks(plan, v, spec, spec.goal(), model=ResNet(plan),
                              batches=iter(batches))
    got = scores.compute_masks(net, v, spec, spec.goal(), module=ResNet(plan),
                               batches=iter(batches))
    assert all(np.array_equal(got.masks[t], want.masks[n]) for n, t in names.items())
    assert (got.params, got.macs) == (want.params, want.macs)
    assert abs(want.macs / count(plan, 32).macs - 0.5) <= 0.01
    # the scores themselves: the same gradients, summed in another order (measured: up
    # to 1.5e-7 of the largest score)
    inp = criteria.ScoreInputs(plan, v, model=ResNet(plan), batches=iter(batches),
                               num_batches=2)
    planned = criteria.CRITERIA["taylor"](inp)
    traced = scores.taylor(net, ResNet(plan), v, iter(batches), 2)
    top = max(float(np.abs(x).max()) for x in planned.values())
    for n, t in names.items():
        np.testing.assert_allclose(traced[t], planned[n], rtol=0, atol=1e-6 * top)


def test_hrank_on_traced_inner_groups_gives_the_plans_ranks(both):
    plan, v, net, names, batches = both
    inp = criteria.ScoreInputs(plan, v, model=ResNet(plan), batches=iter(batches),
                               num_batches=2)
    planned = criteria.CRITERIA["hrank"](inp)
    traced = scores.hrank(net, ResNet(plan), v, iter(batches), 2)
    inner = [n for n, g in channel_groups(plan).items() if g.kind == "inner"]
    assert inner and all(np.array_equal(traced[names[n]], planned[n]) for n in inner)
    assert all(traced[names[n]].max() > 1 for n in inner)      # ranks, not zeros


def test_data_criteria_need_their_data():
    plan = PLANS["resnet20"]
    v = random_variables(plan)
    net = T.trace(ResNet(plan), v, jnp.zeros((1, 32, 32, 3))).net()
    spec = PruneSpec(criterion="hrank")
    with pytest.raises(TraceError, match="needs the masked model's forward pass on training "
                       "batches"):
        scores.compute_masks(net, v, spec, spec.goal())


@pytest.fixture(scope="module")
def mobilenet():
    """MobileNetV2 width 0.25 as the training loop sees it, with random variables."""
    net = network(example_net("mobilenetv2", 32, width=0.25, num_classes=10))
    return net, example_variables(net.model, (1, 32, 32, 3))


@pytest.mark.parametrize("criterion,allocation,kind,target", [
    ("l2", "global", "params_fraction", 0.6), ("fpgm", "uniform", "ratio", 0.3),
    ("bn_scale", "global", "macs", 5e6), ("random", "uniform", "macs_fraction", 0.7)])
def test_every_criterion_allocation_and_target_on_traced_groups(mobilenet, criterion,
                                                                 allocation, kind, target):
    """One-shot, then a second event on top (a schedule's masks only shrink); the cost
    the allocator predicts is the materialised network's own."""
    net, v = mobilenet
    dense = net.cost()
    spec = PruneSpec(criterion=criterion, allocation=allocation, target_kind=kind,
                     target=target, round_to=2 if allocation == "global" else 1)
    first = net.compute_masks(v, spec, spec.goal())
    if kind == "ratio":
        kept = sum(int(m.sum()) for m in first.masks.values())
        assert abs(1 - kept / sum(g.size for g in net.groups.values()) - target) < 0.03
    else:
        want = {"params_fraction": dense.params * target, "macs_fraction": dense.macs * target,
                "macs": target}[kind]
        got = first.params if kind.startswith("params") else first.macs
        assert abs(got / want - 1) <= 0.01
    assert net.small(first.masks).cost() == Cost(first.params, first.macs, 32)
    second = net.compute_masks(v, spec, Target("ratio", 0.5), masks=first.masks)
    for n, m in second.masks.items():
        assert np.all(m <= first.masks[n]) and m.sum() >= 1
    assert second.macs < first.macs
