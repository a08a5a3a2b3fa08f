"""The literature's pruning methods in thinjax: FPGM, HRank, soft filter pruning, group
lasso (DepGraph sparse learning) and growing regularisation (GReg), each on a planted case
that tells it apart from the others, and each through compute_masks to a materialised,
evaluable smaller network."""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import traverse_util

from thinjax.config import base_config
from thinjax.cost import count
from thinjax.models.resnet import ResNet, random_variables
from thinjax.plan import BlockPlan, Plan, StagePlan, plan_from_width
from thinjax.prune import regularize, schedule
from thinjax.prune.allocate import Target
from thinjax.prune.criteria import CRITERIA, DATA_CRITERIA, ScoreInputs, needs_data, score_groups
from thinjax.prune.groups import channel_groups, init_masks, keep_counts, leaf_axes
from thinjax.prune.materialize import materialize
from thinjax.prune.pruner import compute_masks
from thinjax.prune.soft import soft_event

TINY = Plan("basic", "cifar", stem_width=4, num_classes=10, stages=(
    StagePlan(4, 1, (BlockPlan((4,)),)), StagePlan(8, 2, (BlockPlan((6,), proj=True),))))
INNER = "stage2/block1/conv1"   # resnet20 w=8: a 16-channel inner group


def flat(tree) -> dict:
    return traverse_util.flatten_dict(tree, sep="/")


def with_params(variables: dict, updates: dict) -> dict:
    p = flat(variables["params"])
    p.update(updates)
    return {**variables, "params": traverse_util.unflatten_dict(p, sep="/")}


def calibrated(plan: Plan, variables: dict, x) -> dict:
    """`variables` with BN statistics of the images `x` (every BN output then has zero mean
    and unit variance per channel: no channel is dead, as in a trained network)."""
    model = ResNet(plan, bn_momentum=0.0)
    _, upd = jax.jit(functools.partial(model.apply, train=True, mutable=["batch_stats"]))(
        variables, x)
    return {**variables, "batch_stats": upd["batch_stats"]}


def images(n: int, batches: int = 2, seed: int = 0) -> list[dict]:
    r = np.random.default_rng(seed)
    return [{"image": jnp.asarray(r.normal(size=(n, 32, 32, 3)), jnp.float32),
             "label": jnp.asarray(r.integers(0, 10, n))} for _ in range(batches)]


def prune_cfg(**kw) -> ml_collections.ConfigDict:
    c = base_config().prune
    c.update(kw)
    return c


# -- criteria ------------------------------------------------------------------------------

def test_fpgm_removes_the_replaceable_high_norm_duplicates_that_l1_keeps():
    """Ten near-identical large filters sit at the geometric median of the layer: FPGM
    removes them first, L1 removes the six small outliers first."""
    plan = plan_from_width("resnet20", 8)
    v = random_variables(plan, seed=1)
    r = np.random.default_rng(1)
    k = np.array(flat(v["params"])[f"{INNER}/kernel"])        # (3, 3, 8, 16)
    a = r.normal(size=k.shape[:3])
    a *= 3.0 / np.linalg.norm(a)
    for c in range(10):
        k[..., c] = a + 0.01 * r.normal(size=a.shape)
    for c in range(10, 16):
        k[..., c] = r.normal(size=a.shape) / np.sqrt(a.size)   # norm ~1, far from a
    v = with_params(v, {f"{INNER}/kernel": k})
    fp = score_groups(ScoreInputs(plan, v), "fpgm")[INNER]
    l1 = score_groups(ScoreInputs(plan, v), "l1")[INNER]
    assert set(np.argsort(l1)[:6]) == set(range(10, 16))
    assert set(np.argsort(fp)[:6]) <= set(range(10))
    assert set(np.argsort(fp)[-6:]) == set(range(10, 16))     # FPGM keeps the outliers
    # fpgm_p >= 1 (Torch-Pruning) compares |w|^p: a filter and its negation coincide
    k2 = k.copy()
    k2[..., 10] = -k2[..., 0]
    v2 = with_params(v, {f"{INNER}/kernel": k2})
    raw = score_groups(ScoreInputs(plan, v2), "fpgm")[INNER]
    sq = score_groups(ScoreInputs(plan, v2, fpgm_p=2), "fpgm")[INNER]
    assert np.argsort(raw)[-1] == 10 and np.argsort(sq)[-1] != 10


def test_hrank_ranks_a_rank_one_feature_map_last_where_l1_ranks_it_first():
    """A channel with a large filter but BN scale 0 and shift 1 outputs the constant map 1
    (rank 1): HRank ranks it last, L1 first."""
    plan = plan_from_width("resnet20", 8)
    data = images(8)
    v = calibrated(plan, random_variables(plan, seed=2), data[0]["image"])
    p = flat(v["params"])
    k = np.array(p[f"{INNER}/kernel"])
    k[..., 3] *= 10.0
    scale, bias = np.array(p["stage2/block1/bn1/scale"]), np.array(p["stage2/block1/bn1/bias"])
    scale[3], bias[3] = 0.0, 1.0
    v = with_params(v, {f"{INNER}/kernel": k, "stage2/block1/bn1/scale": scale,
                        "stage2/block1/bn1/bias": bias})
    inp = ScoreInputs(plan, v, model=ResNet(plan), batches=data, num_batches=2)
    hr = score_groups(inp, "hrank")
    assert hr[INNER][3] == 1.0 and np.all(np.delete(hr[INNER], 3) > 1.0), hr[INNER]
    assert np.argmax(score_groups(ScoreInputs(plan, v), "l1")[INNER]) == 3
    # streams: ranks of 32x32, 16x16, 8x8 maps, averaged over the blocks writing into them
    assert hr["stem+stage1"].max() <= 32 and hr["stage3"].max() <= 8
    assert hr["stage3"].min() >= 0 and hr["stem+stage1"].mean() > 8


def test_data_criteria_need_data_and_are_registered():
    assert {"fpgm", "hrank", "group_norm"} <= set(CRITERIA)
    assert needs_data("hrank") and needs_data("taylor") and not needs_data("fpgm")
    assert set(DATA_CRITERIA) == {"taylor", "hrank"}
    v = random_variables(TINY)
    with pytest.raises(ValueError, match="'hrank' needs data"):
        score_groups(ScoreInputs(TINY, v), "hrank")
    with pytest.raises(ValueError, match="unknown score members 'some'"):
        score_groups(ScoreInputs(TINY, v, members="some"), "l1")
    for key in ("score_members", "fpgm_p", "regularizer", "reg_strength", "greg_step",
                "greg_every", "greg_ceiling"):
        assert key in base_config().prune


# -- soft filter pruning -----------------------------------------------------------------

def test_soft_schedule_events():
    c = prune_cfg(schedule="soft", start_epoch=1.0, end_epoch=4.0, every_epochs=1.0)
    ev = schedule.events(c, 10, 100)
    assert ev == [(10, 1.0), (20, 1.0), (30, 1.0), (40, 1.0)]
    assert [schedule.is_soft(c, k, len(ev)) for k in range(len(ev))] == [True] * 3 + [False]
    assert not schedule.is_soft(prune_cfg(schedule="gradual"), 0, 4)
    with pytest.raises(ValueError, match="end_epoch.*soft schedule"):
        schedule.events(prune_cfg(schedule="soft", start_epoch=2.0, end_epoch=2.0), 10, 100)


def test_soft_event_zeroes_filters_only_and_they_train_on():
    from thinjax.train.state import TrainState
    from thinjax.train.step import StepConfig, train_step
    v = random_variables(TINY, seed=3)
    masks = compute_masks(TINY, v, prune_cfg(criterion="l1", allocation="uniform"),
                          Target("ratio", 0.5)).masks
    tx = optax.sgd(0.1, momentum=0.9)
    ones = jax.tree.map(lambda z: z + 1.0, tx.init(v["params"]))   # an optimizer state
    tree = {"params": v["params"], "batch_stats": v["batch_stats"], "momentum": ones}
    out = jax.jit(functools.partial(soft_event, TINY))(tree, masks)
    before, after = flat(tree["params"]), flat(out["params"])
    kernels = {k: n for n, g in channel_groups(TINY).items() for k in g.kernels}
    for path, x in before.items():
        y = np.asarray(after[path])
        if path in kernels:
            keep = masks[kernels[path]] > 0
            assert np.all(y[..., ~keep] == 0) and np.array_equal(y[..., keep], x[..., keep])
        else:  # BN, consumer-only kernels (the head), biases: untouched
            assert np.array_equal(y, x), path
    for a, b in zip(jax.tree.leaves(out["batch_stats"]), jax.tree.leaves(tree["batch_stats"])):
        np.testing.assert_array_equal(a, b)
    trace = flat(out["momentum"][0].trace)   # matched by the parameter path inside it
    dead = masks["stage2"] == 0
    assert np.all(np.asarray(trace["stage2/block0/proj/conv/kernel"])[..., dead] == 0)
    assert np.all(np.asarray(trace["stage2/block0/proj/conv/kernel"])[..., ~dead] == 1)
    assert np.all(np.asarray(trace["head/kernel"]) == 1)
    # no mask is kept: one training step revives the zeroed filters. (A zeroed filter's BN
    # outputs its shift beta; through the ReLU it gets a gradient only where beta > 0.)
    p = flat(out["params"])
    p["stage2/block0/bn1/bias"] = np.abs(p["stage2/block0/bn1/bias"]) + 0.1
    out["params"] = traverse_util.unflatten_dict(p, sep="/")
    st = TrainState(step=jnp.zeros((), jnp.int32), params=out["params"],
                    batch_stats=v["batch_stats"], opt_state=tx.init(out["params"]),
                    ema_params=out["params"], ema_batch_stats=v["batch_stats"],
                    rng=jax.random.key_data(jax.random.PRNGKey(0)), masks={})
    step = functools.partial(train_step, model=ResNet(TINY), tx=tx,
                             schedule=optax.constant_schedule(0.1), cfg=StepConfig(10))
    st, _ = jax.jit(step)(st, images(8, 1)[0])
    k = np.asarray(flat(st.params)["stage2/block0/conv1/kernel"])
    dead = masks["stage2/block0/conv1"] == 0
    assert dead.any() and np.all(np.abs(k[..., dead]).sum((0, 1, 2)) > 0)


# -- group lasso and GReg ------------------------------------------------------------------

def expected_grad(plan, params, per_channel) -> dict:
    """d/dw of sum_g sum_c f_g(s_gc), given per_channel[g] = f_g'(s_gc) * 2 (the factor
    that multiplies w in the gradient), over every leaf and axis that the groups touch."""
    out = {}
    for path, w in flat(params).items():
        w = np.asarray(w, np.float64)
        factor = np.zeros_like(w)
        for axis, g in leaf_axes(plan).get(path, ()):
            shape = [1] * w.ndim
            shape[axis] = -1
            factor = factor + np.reshape(per_channel[g], shape)
        out[path] = factor * w
    return out


def test_group_lasso_value_and_gradient_are_per_channel_group_norms():
    v = random_variables(TINY, seed=4)
    zero = "stage2/block0/conv1"     # a channel zeroed everywhere (as if pruned): no NaN
    p = flat(v["params"])
    for path, axis in channel_groups(TINY)[zero].producers + channel_groups(TINY)[zero].consumers:
        if path in p:
            a = np.array(p[path])
            np.moveaxis(a, axis, 0)[2] = 0.0
            p[path] = a
    params = traverse_util.unflatten_dict(p, sep="/")
    cfg = prune_cfg(regularizer="group_lasso", reg_strength=0.01)
    sq = {n: np.asarray(s, np.float64) for n, s in
          regularize.channel_sq_norms(params, TINY).items()}
    assert sq[zero][2] == 0 and np.all(np.delete(sq[zero], 2) > 0)
    val, grad = jax.jit(jax.value_and_grad(
        lambda p: regularize.penalty(p, TINY, cfg, 0, None)))(params)
    np.testing.assert_allclose(val, 0.01 * sum(np.sqrt(s).sum() for s in sq.values()),
                               rtol=1e-5)
    inv = {n: np.where(s > 0, 0.01 / np.sqrt(np.where(s > 0, s, 1)), 0) for n, s in sq.items()}
    want = expected_grad(TINY, params, inv)
    for path, g in flat(grad).items():
        assert np.all(np.isfinite(g)), path
        np.testing.assert_allclose(g, want[path], rtol=1e-4, atol=1e-7, err_msg=path)
    masks = init_masks(TINY)
    masks["stage2"][0] = 0.0
    masked = regularize.penalty(params, TINY, cfg, 0, masks)
    assert float(masked) < float(val)


def test_greg_pushes_exactly_the_selected_channels_with_a_growing_coefficient():
    v = random_variables(TINY, seed=5)
    cfg = prune_cfg(regularizer="greg", greg_step=1e-2, greg_every=10, greg_ceiling=0.05,
                    criterion="l1", allocation="uniform", target_kind="ratio", target=0.5)
    reg = regularize.build(TINY, cfg, v)
    sel = compute_masks(TINY, v, cfg, Target("ratio", 0.5)).masks
    assert all(np.array_equal(reg.masks[n], sel[n]) for n in sel)
    assert [float(regularize.greg_coefficient(cfg, s)) for s in (0, 9, 10, 25, 10 ** 6)] == \
        pytest.approx([0.0, 0.0, 0.01, 0.02, 0.05])
    assert float(reg(v["params"], 9)) == 0.0
    grad_fn = jax.jit(jax.grad(reg))
    grad = grad_fn(v["params"], 25)
    want = expected_grad(TINY, v["params"], {n: 0.02 * (1 - m) for n, m in sel.items()})
    for path, g in flat(grad).items():
        np.testing.assert_allclose(g, want[path], rtol=1e-5, atol=1e-8, err_msg=path)
        assert np.array_equal(np.asarray(g) != 0, want[path] != 0), path  # exactly those
    # then pruning by the same criterion removes exactly the selection
    params = v["params"]
    for _ in range(30):
        params = jax.tree.map(lambda w, g: w - 10.0 * g, params, grad_fn(params, 1000))
    after = compute_masks(TINY, {**v, "params": params}, cfg, Target("ratio", 0.5)).masks
    assert all(np.array_equal(after[n], sel[n]) for n in sel)
    with pytest.raises(ValueError, match="'greg' needs the channels"):
        regularize.penalty(v["params"], TINY, cfg, 0, None)
    assert regularize.build(TINY, prune_cfg(), v) is None


def test_train_step_adds_the_penalty_to_the_loss():
    from thinjax.train.state import TrainState
    from thinjax.train.step import StepConfig, train_step
    v = random_variables(TINY, seed=6)
    tx = optax.sgd(0.0)
    reg = regularize.build(TINY, prune_cfg(regularizer="group_lasso", reg_strength=0.1), v)
    st = TrainState(step=jnp.zeros((), jnp.int32), params=v["params"],
                    batch_stats=v["batch_stats"], opt_state=tx.init(v["params"]),
                    ema_params=v["params"], ema_batch_stats=v["batch_stats"],
                    rng=jax.random.key_data(jax.random.PRNGKey(0)), masks={})
    batch = images(4, 1)[0]
    step = functools.partial(train_step, model=ResNet(TINY), tx=tx,
                             schedule=optax.constant_schedule(0.0),
                             cfg=StepConfig(10, ema=False, prune_reg=reg))
    loss = float(jax.jit(step)(st, batch)[1]["loss"])
    logits, _ = ResNet(TINY).apply(v, batch["image"], train=True, mutable=["batch_stats"])
    plain = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()
    np.testing.assert_allclose(loss - float(plain), float(reg(v["params"], 0)), rtol=1e-4)


# -- every method through compute_masks to a smaller network --------------------------------

@pytest.mark.parametrize("criterion,members", [("fpgm", "producers"), ("fpgm", "all"),
                                               ("hrank", "producers"),
                                               ("group_norm", "all"), ("l1", "all")])
def test_each_method_prunes_to_a_mac_target_and_materialises(criterion, members):
    plan = plan_from_width("resnet20", 4)
    v = random_variables(plan, seed=7)
    x = images(4, 1, seed=8)[0]["image"]
    cfg = prune_cfg(criterion=criterion, score_members=members, taylor_batches=1)
    a = compute_masks(plan, v, cfg, Target("macs_fraction", 0.5), model=ResNet(plan),
                      batches=images(4, 1))
    small, sv = materialize(plan, a.masks, v)
    assert abs(count(small).macs / count(plan).macs - 0.5) < 0.01
    assert sum(keep_counts(a.masks).values()) < sum(g.size for g in channel_groups(plan).values())
    np.testing.assert_allclose(ResNet(small).apply(sv, x),
                               ResNet(plan).apply(v, x, masks=a.masks), rtol=1e-5, atol=1e-5)


def test_soft_then_hard_and_regularised_then_pruned_materialise():
    """SFP: soft events (filters zeroed, no masks), then the hard event's masks; GReg:
    the selection from the start is what the final pruning removes. Both materialise."""
    v = random_variables(TINY, seed=9)
    cfg = prune_cfg(criterion="l1", allocation="global", schedule="soft")
    tgt = Target("macs_fraction", 0.6)
    for _ in range(2):   # two soft events on (here: unchanged) weights
        v = {**v, "params": soft_event(TINY, v["params"],
                                       compute_masks(TINY, v, cfg, tgt).masks)}
    hard = compute_masks(TINY, v, cfg, tgt).masks
    small, sv = materialize(TINY, hard, v)
    x = images(2, 1)[0]["image"]
    np.testing.assert_allclose(ResNet(small).apply(sv, x), ResNet(TINY).apply(v, x, masks=hard),
                               rtol=1e-5, atol=1e-5)
    assert count(small).macs < count(TINY).macs


def test_a_regulariser_refuses_the_materialised_network():
    v = random_variables(TINY, seed=10)
    cfg = prune_cfg(regularizer="group_lasso")
    reg = regularize.build(TINY, cfg, v)
    masks = compute_masks(TINY, v, prune_cfg(), Target("ratio", 0.5)).masks
    _, small = materialize(TINY, masks, v)
    with pytest.raises(ValueError, match="after materialisation train without it"):
        reg(small["params"], 0)
    with pytest.raises(ValueError, match="prune.regularizer 'l2' unknown"):
        regularize.build(TINY, prune_cfg(regularizer="l2"), v)
