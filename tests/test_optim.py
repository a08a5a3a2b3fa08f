import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import traverse_util

from thinjax import optim
from thinjax.config import base_config, validate
from thinjax.models.resnet import variable_shapes
from thinjax.plan import plan_from_width
from thinjax.train.mix import mix


def optim_cfg(**kw):
    c = ml_collections.ConfigDict(base_config().optim.to_dict())
    for k, v in kw.items():
        c[k] = v
    return c


def test_schedule_is_linear_warmup_from_one_percent_then_cosine_to_zero():
    c = optim_cfg()  # the recipe: lr 0.5 at batch 1024, 5 warmup epochs from 1%
    spe, total = 100, 600 * 100
    sched = optim.learning_rate_schedule(c, global_batch=256, steps_per_epoch=spe,
                                         total_steps=total)
    peak = 0.5 * 256 / 1024
    warm = 5 * spe
    assert float(sched(0)) == pytest.approx(0.01 * peak)
    assert float(sched(warm // 2)) == pytest.approx(peak * (0.01 + 0.99 * 0.5), rel=1e-5)
    assert float(sched(warm)) == pytest.approx(peak)
    mid = warm + (total - warm) // 2
    assert float(sched(mid)) == pytest.approx(peak * 0.5, rel=1e-3)
    assert float(sched(total)) == pytest.approx(0.0, abs=1e-9)
    assert optim.scaled_lr(c, 128) == pytest.approx(0.0625)


def test_weight_decay_only_on_conv_and_dense_kernels():
    params = variable_shapes(plan_from_width("resnet20", 4))["params"]
    mask = traverse_util.flatten_dict(
        optim.weight_decay_mask(params, base_config().optim.weight_decay_on), sep="/")
    assert mask["stem/conv/kernel"] and mask["head/kernel"]
    assert mask["stage2/block0/proj/conv/kernel"] and mask["stage3/block2/conv2/kernel"]
    assert not mask["head/bias"] and not mask["stem/bn/scale"] and not mask["stem/bn/bias"]
    assert sum(mask.values()) == 22  # 19 convs + 2 projections + the head


def test_sgd_matches_pytorch_coupled_weight_decay():
    c = optim_cfg(weight_decay=0.1)
    params = {"conv": {"kernel": jnp.ones((2,))}, "bn": {"scale": jnp.ones((2,))}}
    tx = optim.make_optimizer(c, lambda s: 0.5, params)
    st = tx.init(params)
    g = {"conv": {"kernel": jnp.full((2,), 0.2)}, "bn": {"scale": jnp.full((2,), 0.2)}}
    upd, st = tx.update(g, st, params)
    # PyTorch SGD: buf = g + wd * p ; p -= lr * buf   (first step: momentum buffer = d_p)
    np.testing.assert_allclose(upd["conv"]["kernel"], -0.5 * (0.2 + 0.1 * 1.0), rtol=1e-6)
    np.testing.assert_allclose(upd["bn"]["scale"], -0.5 * 0.2, rtol=1e-6)
    upd2, _ = tx.update(g, st, params)
    np.testing.assert_allclose(upd2["bn"]["scale"], -0.5 * (0.9 * 0.2 + 0.2), rtol=1e-6)


def test_ema_decay_follows_torchvision_adjustment():
    e = base_config().ema
    # torchvision reference: alpha = (1 - 0.99998) * 1024 * 32 / 600
    assert optim.ema_decay(e, 1024, 600) == pytest.approx(1 - 2e-5 * 1024 * 32 / 600)
    e2 = ml_collections.ConfigDict(e.to_dict())
    e2.adjust = False
    assert optim.ema_decay(e2, 1024, 600) == 0.99998


def test_losses_with_label_smoothing():
    logits = jnp.array([[2.0, 0.0, -1.0]])
    t = optim.smooth_labels(jnp.array([0]), 3, 0.1)
    np.testing.assert_allclose(t, [[0.9 + 0.1 / 3, 0.1 / 3, 0.1 / 3]], rtol=1e-6)
    ce = optim.cross_entropy(logits, t)
    logp = jax.nn.log_softmax(logits)
    np.testing.assert_allclose(ce, -(t * logp).sum(-1), rtol=1e-6)
    bce = optim.binary_cross_entropy(logits, t)
    p = jax.nn.sigmoid(logits)
    np.testing.assert_allclose(bce, -(t * jnp.log(p) + (1 - t) * jnp.log(1 - p)).mean(-1),
                               rtol=1e-5)


def test_mixup_and_cutmix_mix_images_and_targets_consistently():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((8, 16, 16, 3)), jnp.float32)
    y = jax.nn.one_hot(jnp.arange(8) % 4, 4)
    for k in range(6):
        xm, ym = mix(jax.random.PRNGKey(k), x, y, mixup_alpha=0.2, cutmix_alpha=1.0)
        np.testing.assert_allclose(ym.sum(-1), 1.0, rtol=1e-6)
        lam = float(ym[0, 0])  # example 0 has class 0, its partner (example 7) class 3
        partner = x[7]
        is_cut = bool(jnp.any(jnp.all(xm[0] == partner, axis=-1)))
        if is_cut:  # cutmix: lam is the fraction of pixels kept
            kept = float(jnp.mean(jnp.all(xm[0] == x[0], axis=-1)))
            assert kept == pytest.approx(lam, abs=1e-6)
        else:  # mixup: a convex combination with the same lam
            np.testing.assert_allclose(xm[0], lam * x[0] + (1 - lam) * partner, atol=1e-5)
    xs, ys = mix(jax.random.PRNGKey(0), x, y)
    assert xs is x and ys is y


def test_config_schema_refuses_unknown_keys():
    c = base_config()
    validate(c)
    c.unlock()
    c.train.epoks = 3
    with pytest.raises(ValueError, match=r"unknown config key 'train.epoks'; did you mean "
                                         r"'train.epochs'\? valid keys here: .*train.epochs"):
        validate(c)


def test_gradient_accumulation_averages_micro_batch_gradients():
    import functools

    from thinjax.models.resnet import ResNet
    from thinjax.train import state as state_lib
    from thinjax.train.step import StepConfig, train_step
    model = ResNet(plan_from_width("resnet20", 4))
    c = optim_cfg(momentum=0.0, weight_decay=0.0)
    shapes = variable_shapes(model.plan)
    tx = optim.make_optimizer(c, lambda s: 0.1, shapes["params"])
    st = jax.jit(functools.partial(state_lib.create, model, tx, input_shape=(1, 32, 32, 3)))(
        jax.random.PRNGKey(0))
    r = np.random.default_rng(0)
    batch = {"image": r.standard_normal((16, 32, 32, 3)).astype(np.float32),
             "label": (np.arange(16) % 10).astype(np.int32)}
    half = [{k: v[i * 8:(i + 1) * 8] for k, v in batch.items()} for i in range(2)]

    def step(k):
        return jax.jit(functools.partial(train_step, model=model, tx=tx, schedule=lambda s: 0.1,
                                         cfg=StepConfig(num_classes=10, grad_accum=k)))

    full, _ = step(2)(st, batch)
    parts = [step(1)(st, h)[0] for h in half]
    expect = jax.tree.map(lambda p, a, b: p + ((a - p) + (b - p)) / 2, st.params,
                          parts[0].params, parts[1].params)
    for x, y in zip(jax.tree.leaves(full.params), jax.tree.leaves(expect)):
        np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-6)
    moved = max(float(jnp.abs(a - b).max()) for a, b in
                zip(jax.tree.leaves(full.params), jax.tree.leaves(st.params)))
    assert moved > 1e-3
