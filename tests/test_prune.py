"""Structured pruning: groups, masked == materialised, criteria, targets, training state."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import traverse_util

from tests.helpers import n_params, random_masks
from thinjax.cost import count
from thinjax.models.resnet import Conv, ResNet, random_variables
from thinjax.plan import plan_from_width
from thinjax.prune import schedule
from thinjax.prune.allocate import Target, TargetError, allocate
from thinjax.prune.criteria import CRITERIA, ScoreInputs, score_groups
from thinjax.prune.groups import channel_groups, check_masks, init_masks, keep_counts
from thinjax.prune.materialize import materialize, slice_opt_state, slice_tree, small_plan

PLANS = [("resnet20", 8, 32), ("resnet56", 4, 32), ("resnet18", 8, 64), ("resnet50", 8, 64)]


def conv_macs(plan, variables, size):
    """MACs measured from the tree and the actual conv outputs (not from the counter)."""
    _, state = ResNet(plan).apply(variables, jnp.zeros((1, size, size, 3)),
                                  capture_intermediates=lambda m, _: isinstance(m, Conv),
                                  mutable=["intermediates"])
    params = traverse_util.flatten_dict(variables["params"], sep="/")
    macs = 0
    for path, out in traverse_util.flatten_dict(state["intermediates"], sep="/").items():
        k = params[path.rsplit("/", 1)[0] + "/kernel"]
        macs += int(np.prod(k.shape)) * out[0].shape[1] * out[0].shape[2]
    return macs + int(np.prod(params["head/kernel"].shape))


def test_group_names_and_coupling():
    g20 = channel_groups(plan_from_width("resnet20", 16))
    assert list(g20)[:3] == ["stem+stage1", "stage2", "stage3"]
    assert len(g20) == 3 + 9  # three streams, one inner group per basic block
    s1 = g20["stem+stage1"]
    kernels_in = {p for p, a in s1.consumers}
    assert {"stage1/block0/conv1/kernel", "stage2/block0/proj/conv/kernel",
            "stage2/block0/conv1/kernel"} <= kernels_in
    assert "stem/conv/kernel" in s1.kernels and "stage1/block2/conv2/kernel" in s1.kernels
    assert ("head/kernel", 0) in g20["stage3"].consumers
    g50 = channel_groups(plan_from_width("resnet50", 16))
    assert list(g50)[:5] == ["stem", "stage1", "stage2", "stage3", "stage4"]
    assert len(g50) == 5 + 2 * 16
    assert not g50["stage1/block0/conv1"].removable and g50["stage1/block1/conv2"].removable


@pytest.mark.parametrize("name,width,size", PLANS)
def test_masked_equals_materialised_for_random_masks(name, width, size):
    plan = plan_from_width(name, width)
    variables = random_variables(plan, seed=1)
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.normal(size=(3, size, size, 3)), jnp.float32)
    for trial in range(3):
        masks = random_masks(plan, rng)
        small, v = materialize(plan, masks, variables)
        assert keep_counts(masks)["stage2" if plan.stem == "imagenet" else "stage2"] \
            == small.stages[1].width
        want = ResNet(plan).apply(variables, x, masks=masks)
        got = ResNet(small).apply(v, x)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
        # the counter agrees with the materialised tree: parameters and MACs
        c = count(small, size)
        assert c.params == n_params(v["params"])
        if trial == 0:
            assert c.macs == conv_macs(small, v, size)


def test_masked_equals_materialised_on_real_images_after_l1_pruning():
    import os

    import thinjax
    from thinjax.checkpoint import load_model
    from thinjax.data import eval_batches, get_source
    asset = os.path.join(os.path.dirname(thinjax.__file__), "assets",
                         "resnet20_width4_cifar10_ema.safetensors")
    plan, variables, _ = load_model(asset)
    scores = score_groups(ScoreInputs(plan, variables), "l1")
    alloc = allocate(plan, scores, Target("ratio", 0.5), method="uniform")
    small, v = materialize(plan, alloc.masks, variables)
    assert [s.width for s in small.stages] == [2, 4, 8]
    batch = next(eval_batches(get_source("sample:cifar10"), "test", 200))
    want = ResNet(plan).apply(variables, batch["image"], masks=alloc.masks)
    got = ResNet(small).apply(v, batch["image"])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert np.mean(np.argmax(got, -1) == batch["label"]) > 0.1  # still a working network


def planted(plan, variables, group, channel):
    """Makes `channel` of `group` dead: every producer filter, BN scale and shift zero."""
    flat = traverse_util.flatten_dict(variables["params"], sep="/")
    for path, axis in channel_groups(plan)[group].producers:
        if path in flat and not path.endswith(("mean", "var")):
            a = np.array(flat[path])
            idx = [slice(None)] * a.ndim
            idx[axis] = channel
            a[tuple(idx)] = 0.0
            flat[path] = a
    return {**variables, "params": traverse_util.unflatten_dict(flat, sep="/")}


@pytest.mark.parametrize("criterion", ["l1", "l2", "bn_scale", "taylor"])
def test_each_criterion_ranks_a_planted_dead_channel_last(criterion):
    plan = plan_from_width("resnet20", 8)
    v = random_variables(plan, seed=3)
    v = planted(plan, v, "stage2/block1/conv1", 5)
    v = planted(plan, v, "stage3", 11)
    rng = np.random.default_rng(0)
    batches = [{"image": jnp.asarray(rng.normal(size=(16, 32, 32, 3)), jnp.float32),
                "label": jnp.asarray(rng.integers(0, 10, 16))} for _ in range(2)]
    for reduce in ("mean", "sum", "max"):
        s = score_groups(ScoreInputs(plan, v, model=ResNet(plan), batches=batches), criterion,
                         reduce)
        for g, c in (("stage2/block1/conv1", 5), ("stage3", 11)):
            others = np.delete(s[g], c)
            assert s[g][c] < others.min(), (criterion, reduce, g, s[g])


def test_criteria_registry_and_bad_names():
    assert {"l1", "l2", "bn_scale", "taylor", "random"} <= set(CRITERIA)
    plan = plan_from_width("resnet20", 4)
    with pytest.raises(ValueError, match="unknown pruning criterion 'l3'.*l1"):
        score_groups(ScoreInputs(plan, random_variables(plan)), "l3")
    with pytest.raises(ValueError, match="needs data"):
        score_groups(ScoreInputs(plan, random_variables(plan)), "taylor")


@pytest.mark.parametrize("name,width,size", [("resnet56", 16, 32), ("resnet50", 16, 224)])
@pytest.mark.parametrize("method", ["global", "uniform"])
def test_params_and_macs_targets_are_hit_within_one_percent(name, width, size, method):
    plan = plan_from_width(name, width)
    scores = score_groups(ScoreInputs(plan, random_variables(plan, 4)), "l2")
    dense = count(plan, size)
    for kind, frac in (("macs", 0.25), ("macs", 0.6), ("params", 0.5), ("params", 0.3)):
        want = frac * getattr(dense, kind)
        a = allocate(plan, scores, Target(kind, want), method=method, input_size=size)
        got = getattr(count(a.plan, size), kind)
        assert abs(got - want) / want < 0.01, (kind, frac, got, want)
        assert a.plan == small_plan(plan, a.masks)
        assert (a.params, a.macs) == (count(a.plan, size).params, count(a.plan, size).macs)
    a = allocate(plan, scores, Target("macs_fraction", 0.5), method=method, input_size=size)
    assert abs(a.macs / dense.macs - 0.5) < 0.01


def test_ratio_round_to_and_explicit_allocation():
    plan = plan_from_width("resnet56", 16)
    scores = score_groups(ScoreInputs(plan, random_variables(plan, 5)), "l1")
    a = allocate(plan, scores, Target("ratio", 0.5), method="uniform")
    assert all(k == g.size // 2 for k, g in zip(keep_counts(a.masks).values(),
                                                channel_groups(plan).values()))
    for method in ("uniform", "global"):
        a = allocate(plan, scores, Target("macs_fraction", 0.4), method=method, round_to=8)
        assert all(k % 8 == 0 for k in keep_counts(a.masks).values()), keep_counts(a.masks)
    a = allocate(plan, scores, Target("ratio", 1.0), method="explicit",
                 group_ratios=(("^stage3$", 0.5), (r"stage1/.*", 0.25)))
    k = keep_counts(a.masks)
    assert k["stage3"] == 32 and k["stage1/block4/conv1"] == 12 and k["stage2"] == 32
    # the explicit shape scaled to a MAC target
    a = allocate(plan, scores, Target("macs_fraction", 0.7), method="explicit",
                 group_ratios=((".*", 1.0),))
    assert abs(a.macs / count(plan).macs - 0.7) < 0.01


def test_streams_never_vanish_blocks_only_with_permission_and_bad_targets():
    plan = plan_from_width("resnet20", 8)
    scores = score_groups(ScoreInputs(plan, random_variables(plan, 6)), "l1")
    a = allocate(plan, scores, Target("ratio", 1.0), method="uniform")
    assert min(keep_counts(a.masks).values()) == 1
    a = allocate(plan, scores, Target("ratio", 1.0), method="global",
                 allow_block_removal=True)
    small = small_plan(plan, a.masks)
    assert all(s.width >= 1 for s in small.stages)
    removed = [b for s in small.stages for b in s.blocks if b.removed]
    assert removed and not any(b.proj for b in removed)
    v = random_variables(plan, 7)
    x = jnp.ones((2, 32, 32, 3))
    _, sv = materialize(plan, a.masks, v)
    np.testing.assert_allclose(ResNet(small).apply(sv, x),
                               ResNet(plan).apply(v, x, masks=a.masks), rtol=1e-5, atol=1e-5)
    with pytest.raises(TargetError, match="unreachable.*smallest network has"):
        allocate(plan, scores, Target("macs", 1000), method="global")
    with pytest.raises(TargetError, match="must be in"):
        Target("ratio", 1.5)
    with pytest.raises(TargetError, match="unknown pruning target kind"):
        Target("flops", 1e6)
    bad = init_masks(plan)
    bad["stage2"] = np.zeros(16, np.float32)
    with pytest.raises(ValueError, match="stage2.*cannot fall to zero"):
        small_plan(plan, bad)
    bad["stage2"] = np.ones(15, np.float32)
    with pytest.raises(ValueError, match="'stage2' has shape"):
        check_masks(plan, bad)


def test_schedules():
    from ml_collections import ConfigDict
    base = dict(schedule="oneshot", start_epoch=0.0, end_epoch=0.0, every_epochs=1.0,
                num_events=1)
    assert schedule.events(ConfigDict(base), 10, 100) == [(0, 1.0)]
    it = schedule.events(ConfigDict({**base, "schedule": "iterative", "num_events": 4,
                                     "start_epoch": 1.0, "every_epochs": 2.0}), 10, 100)
    assert it == [(10, 0.25), (30, 0.5), (50, 0.75), (70, 1.0)]
    gr = schedule.events(ConfigDict({**base, "schedule": "gradual", "start_epoch": 0.0,
                                     "end_epoch": 4.0, "every_epochs": 1.0}), 10, 100)
    assert [s for s, _ in gr] == [10, 20, 30, 40]
    np.testing.assert_allclose([p for _, p in gr], [1 - 0.75 ** 3, 1 - 0.5 ** 3,
                                                    1 - 0.25 ** 3, 1.0])
    with pytest.raises(ValueError, match="not before the end of training"):
        schedule.events(ConfigDict({**base, "start_epoch": 10.0}), 10, 100)
    t = schedule.step_target(Target("macs", 40.0), 0.5, 1000, 100)
    assert (t.kind, t.value) == ("macs", 70.0)


def test_masked_training_step_equals_materialised_step_and_nothing_leaks():
    """One SGD step (momentum, weight decay, EMA) of the masked network updates the kept
    channels exactly as the same step of the materialised network; pruned weights, BN
    entries, momentum and EMA stay exactly zero."""
    from thinjax.train.state import TrainState
    from thinjax.train.step import StepConfig, apply_masks, train_step
    plan = plan_from_width("resnet20", 4)
    v = random_variables(plan, 8)
    masks = random_masks(plan, np.random.default_rng(9), p_drop_block=0.3)
    tx = optax.chain(optax.add_decayed_weights(5e-4), optax.sgd(0.1, momentum=0.9))
    cfg = StepConfig(num_classes=10, label_smoothing=0.1, ema_decay=0.9)
    sched = optax.constant_schedule(0.1)
    rng = np.random.default_rng(10)
    batches = [{"image": jnp.asarray(rng.normal(size=(8, 32, 32, 3)), jnp.float32),
                "label": jnp.asarray(rng.integers(0, 10, 8))} for _ in range(2)]

    def state_for(p, variables, m):
        return TrainState(step=jnp.zeros((), jnp.int32), params=variables["params"],
                          batch_stats=variables["batch_stats"],
                          opt_state=tx.init(variables["params"]),
                          ema_params=variables["params"], ema_batch_stats=variables["batch_stats"],
                          rng=jax.random.key_data(jax.random.PRNGKey(0)), masks=m)

    step_wide = jax.jit(functools.partial(train_step, model=ResNet(plan), tx=tx,
                                          schedule=sched, cfg=cfg))
    st = apply_masks(state_for(plan, v, {k: jnp.asarray(m) for k, m in masks.items()}), plan)
    st, _ = step_wide(st, batches[0])  # momentum is non-zero from here on
    # materialise mid-training: params, BN stats, EMA and optimizer state
    host = jax.device_get(st)
    small = small_plan(plan, masks)
    sl = lambda t: slice_tree(plan, masks, t, small)  # noqa: E731
    small_st = TrainState(step=host.step, params=sl(host.params),
                          batch_stats=sl(host.batch_stats),
                          opt_state=slice_opt_state(plan, masks, host.opt_state,
                                                    tx.init(sl(host.params)), small),
                          ema_params=sl(host.ema_params), ema_batch_stats=sl(host.ema_batch_stats),
                          rng=host.rng, masks={})
    step_small = jax.jit(functools.partial(train_step, model=ResNet(small), tx=tx,
                                           schedule=sched, cfg=cfg))
    st2, m_wide = step_wide(st, batches[1])
    small2, m_small = step_small(small_st, batches[1])
    np.testing.assert_allclose(m_wide["loss"], m_small["loss"], rtol=1e-5)
    for name in ("params", "batch_stats", "ema_params"):
        np.testing.assert_allclose(
            np.concatenate([np.ravel(x) for x in jax.tree.leaves(sl(getattr(st2, name)))]),
            np.concatenate([np.ravel(x) for x in jax.tree.leaves(getattr(small2, name))]),
            rtol=1e-4, atol=1e-5)
    # nothing leaks into pruned channels
    from thinjax.prune.groups import mask_tree
    for tree in (st2.params, st2.ema_params, st2.opt_state):
        zeroed = mask_tree(plan, tree, masks)
        for a, b in zip(jax.tree.leaves(tree), jax.tree.leaves(zeroed)):
            np.testing.assert_array_equal(a, b)
    dead = [n for n, m in masks.items() if not m.all()]
    assert dead


def test_bn_l1_penalty_is_the_sum_of_bn_scale_magnitudes():
    from thinjax.train.step import bn_scale_l1
    plan = plan_from_width("resnet20", 4)
    v = random_variables(plan, 11)
    flat = traverse_util.flatten_dict(v["params"], sep="/")
    want = sum(np.abs(x).sum() for k, x in flat.items() if k.endswith("/scale"))
    assert len([k for k in flat if k.endswith("/scale")]) == 1 + 2 * 9 + 2  # stem, blocks, projs
    np.testing.assert_allclose(float(bn_scale_l1(v["params"])), want, rtol=1e-6)
