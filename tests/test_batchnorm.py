"""thinjax's BatchNorm (hand-written backward) against flax's nn.BatchNorm (autodiff)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from thinjax.models.batchnorm import BatchNorm, batch_norm_train
from thinjax.models.resnet import ResNet
from thinjax.plan import plan_from_width


def _pair(dtype=jnp.float32):
    kw = dict(use_running_average=False, momentum=0.9, epsilon=1e-5, dtype=dtype)
    return nn.BatchNorm(use_fast_variance=False, **kw), BatchNorm(**kw)


def _data(seed=0, shape=(16, 6, 6, 12), loc=5.0):
    r = np.random.default_rng(seed)
    x = jnp.asarray(r.standard_normal(shape) * 3 + loc, jnp.float32)
    params = {"scale": jnp.asarray(r.uniform(0.5, 1.5, shape[-1]), jnp.float32),
              "bias": jnp.asarray(r.standard_normal(shape[-1]), jnp.float32)}
    w = jnp.asarray(r.standard_normal(shape), jnp.float32)
    return x, params, w


def test_same_variables_outputs_and_running_stats():
    ref, new = _pair()
    x, params, _ = _data()
    v_ref, v_new = ref.init(jax.random.PRNGKey(0), x), new.init(jax.random.PRNGKey(0), x)
    assert jax.tree.map(jnp.shape, v_ref) == jax.tree.map(jnp.shape, v_new)
    v = {"params": params, "batch_stats": v_ref["batch_stats"]}
    y1, s1 = ref.apply(v, x, mutable=["batch_stats"])
    y2, s2 = new.apply(v, x, mutable=["batch_stats"])
    # outputs up to ~10: a few float32 ulps (the 12 channels are summed in the lane view
    # of thinjax.ops.lanes, another order than flax's)
    np.testing.assert_allclose(y1, y2, rtol=1e-6, atol=1e-6)
    for k in ("mean", "var"):  # 0.9 * init + 0.1 * batch statistic
        np.testing.assert_allclose(s1["batch_stats"][k], s2["batch_stats"][k], rtol=1e-6)
    assert float(jnp.abs(s2["batch_stats"]["mean"] - 0.1 * x.mean((0, 1, 2))).max()) < 1e-5
    e1 = ref.clone(use_running_average=True).apply(s1 | {"params": params}, x)
    e2 = new.clone(use_running_average=True).apply(s2 | {"params": params}, x)
    np.testing.assert_allclose(e1, e2, rtol=1e-6, atol=1e-6)  # vector code may fuse a*x+b


def test_gradient_equals_autodiff_including_the_statistics_outputs():
    """The loss reads y, the batch mean and the batch variance, so every cotangent of the
    custom VJP is non-zero; gradients wrt x, scale and bias match flax's autodiff."""
    ref, new = _pair()
    x, params, w = _data(1)
    stats = ref.init(jax.random.PRNGKey(0), x)["batch_stats"]

    def loss(m, p, x):
        y, st = m.apply({"params": p, "batch_stats": stats}, x, mutable=["batch_stats"])
        mean, var = st["batch_stats"]["mean"], st["batch_stats"]["var"]
        return jnp.sum(jnp.sin(y) * w) + 3 * jnp.sum(mean * w[0, 0, 0]) + jnp.sum(var ** 2)

    g1 = jax.grad(lambda p, x: loss(ref, p, x), argnums=(0, 1))(params, x)
    g2 = jax.grad(lambda p, x: loss(new, p, x), argnums=(0, 1))(params, x)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
        assert float(jnp.abs(a).max()) > 0.1  # a real gradient, not zeros on both sides
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_large_mean_channels_keep_their_variance():
    """Two-pass variance: a channel with mean 1e4 and std 0.1 keeps var ~ 0.01 (a one-pass
    E[x^2] - mean^2 in float32 would lose it to cancellation)."""
    r = np.random.default_rng(2)
    x = jnp.asarray(1e4 + 0.1 * r.standard_normal((64, 4, 4, 3)), jnp.float32)
    _, mean, var = batch_norm_train(x, jnp.ones(3), jnp.zeros(3), 1e-5)
    np.testing.assert_allclose(var, np.var(np.asarray(x, np.float64), axis=(0, 1, 2)),
                               rtol=1e-2)
    np.testing.assert_allclose(mean, 1e4, rtol=1e-6)


def test_bfloat16_compute_keeps_float32_statistics():
    _, new = _pair(jnp.bfloat16)
    x, params, _ = _data(3)
    v = new.init(jax.random.PRNGKey(0), x.astype(jnp.bfloat16))
    y, st = new.apply({"params": params, "batch_stats": v["batch_stats"]},
                      x.astype(jnp.bfloat16), mutable=["batch_stats"])
    assert y.dtype == jnp.bfloat16 and st["batch_stats"]["var"].dtype == jnp.float32
    g = jax.grad(lambda x: jnp.sum(new.apply({"params": params, "batch_stats": v["batch_stats"]},
                                             x, mutable=["batch_stats"])[0]))(
        x.astype(jnp.bfloat16))
    assert g.dtype == jnp.bfloat16


@pytest.mark.parametrize("name,width", [("resnet20", 4), ("resnet50", 16)])
def test_resnet_train_step_matches_flax_batchnorm(name, width):
    """The whole network: same variable tree, and the loss gradient of a training-mode
    forward within float32 noise of the nn.BatchNorm network's."""
    plan = plan_from_width(name, width, 10)
    size = 32 if name == "resnet20" else 64
    fused, ref = ResNet(plan), ResNet(plan, fused_bn=False)
    x = jax.random.normal(jax.random.PRNGKey(1), (8, size, size, 3))
    v = ref.init(jax.random.PRNGKey(0), x)
    assert jax.tree.map(jnp.shape, v) == jax.tree.map(jnp.shape, fused.init(
        jax.random.PRNGKey(0), x))

    def loss(m, p, x=x):
        y, st = m.apply({"params": p, "batch_stats": v["batch_stats"]}, x, train=True,
                        mutable=["batch_stats"])
        return jnp.sum(jax.nn.log_softmax(y)[:, 0]), st

    (l1, s1), g1 = jax.value_and_grad(lambda p: loss(ref, p), has_aux=True)(v["params"])
    (l2, s2), g2 = jax.value_and_grad(lambda p: loss(fused, p), has_aux=True)(v["params"])
    np.testing.assert_allclose(l1, l2, rtol=1e-5)
    # the noise band: the reference again with every input value moved by one ulp
    # (ResNet-50 with batch 8 amplifies it: up to thousands of times the tolerance below)
    x_ulp = x * (1 + 2.0 ** -23)
    (_, s3), g3 = jax.value_and_grad(lambda p: loss(ref, p, x_ulp), has_aux=True)(v["params"])
    for a, b, c in zip(*(jax.tree.leaves(t) for t in ((g1, s1), (g2, s2), (g3, s3)))):
        # float32 rounding, relative to the leaf's scale (gradients reach ~20 here), or
        # within the one-ulp band (BatchNorm here sums in another order than flax)
        if not np.allclose(a, b, rtol=1e-3, atol=1e-5 * max(1.0, np.abs(a).max())):
            assert np.abs(a - b).max() <= np.abs(a - c).max(), (a, b, c)
