"""thinjax.models.resnet.fusion_barrier: an exact identity that stops XLA:CPU from
recomputing a residual stage's whole elementwise chain inside every consumer."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from thinjax.models.resnet import ResNet, fusion_barrier
from thinjax.plan import plan_from_width


def test_identity_for_every_value_including_inf_and_nan():
    x = jnp.array([[np.nan, 1.5, -0.0], [np.inf, -np.inf, 3e38]], jnp.float32)
    for first in (np.nan, np.inf, 7.0, -2.0):  # the divisor is read from x's first element
        y = fusion_barrier(x.at[0, 0].set(first))
        np.testing.assert_array_equal(np.asarray(y), np.asarray(x.at[0, 0].set(first)))
        ref = jnp.full((3,), first, jnp.float32)  # the divisor read from another array
        np.testing.assert_array_equal(np.asarray(fusion_barrier(x, ref)), np.asarray(x))
    xb = x.astype(jnp.bfloat16)
    assert fusion_barrier(xb).dtype == jnp.bfloat16
    g = jax.grad(lambda x: jnp.sum(fusion_barrier(x) * jnp.arange(6.0).reshape(2, 3)))(
        jnp.ones((2, 3)))
    np.testing.assert_array_equal(g, np.arange(6.0).reshape(2, 3))


def _train_grad(model, x, v):
    def loss(p):
        y, _ = model.apply({"params": p, "batch_stats": v["batch_stats"]}, x, train=True,
                           mutable=["batch_stats"])
        return jnp.sum(jax.nn.log_softmax(y)[:, 0])
    return jax.jit(jax.grad(loss))


def test_same_logits_and_gradients_with_and_without_the_barrier():
    plan = plan_from_width("resnet20", 4, 10)
    x = jax.random.normal(jax.random.PRNGKey(1), (8, 32, 32, 3))
    on, off = ResNet(plan, fusion_barrier=True), ResNet(plan, fusion_barrier=False)
    v = off.init(jax.random.PRNGKey(0), x)
    np.testing.assert_allclose(on.apply(v, x), off.apply(v, x), rtol=1e-6, atol=1e-6)
    g_on, g_off = _train_grad(on, x, v)(v["params"]), _train_grad(off, x, v)(v["params"])
    for a, b in zip(jax.tree.leaves(g_on), jax.tree.leaves(g_off)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def _largest_fusion_inputs(model, x) -> int:
    v = model.init(jax.random.PRNGKey(0), x[:1])
    hlo = _train_grad(model, x, v).lower(v["params"]).compile().as_text()
    comps = [c for c in hlo.split("\n\n") if not c.lstrip().startswith("ENTRY")]
    return max(len(re.findall(r"parameter\(", c)) for c in comps)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="an XLA:CPU fusion property")
def test_barrier_stops_the_quadratic_recomputation_in_a_deep_stage():
    """ResNet-56 (9 blocks per stage): without the barrier, XLA fuses a stage's residual
    chain, block after block, into single computations reading dozens of conv outputs and
    BN parameters; with it, every fused computation reads a handful of inputs."""
    plan = plan_from_width("resnet56", 4, 10)
    x = jnp.zeros((4, 32, 32, 3))
    without = _largest_fusion_inputs(ResNet(plan, fusion_barrier=False), x)
    with_barrier = _largest_fusion_inputs(ResNet(plan, fusion_barrier=True), x)
    assert without >= 30, without  # the pathology this guards against is still real
    assert with_barrier <= 16, with_barrier


def test_default_is_on_for_the_cpu_backend():
    plan = plan_from_width("resnet20", 4, 10)
    x = jnp.zeros((2, 32, 32, 3))
    v = ResNet(plan).init(jax.random.PRNGKey(0), x)
    text = jax.jit(lambda v, x: ResNet(plan).apply(v, x)).lower(v, x).as_text()
    assert (text.count("divide") >= 9) == (jax.default_backend() == "cpu")


def test_no_collective_added_on_a_batch_sharded_mesh(tmp_path):
    """The blocks take the divisor from a replicated parameter, so a data-parallel training
    step has exactly the all-reduces it has without the barrier (4 CPU devices)."""
    import subprocess
    import sys
    code = """
import collections, re, jax, jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from thinjax.models.resnet import ResNet
from thinjax.plan import plan_from_width
mesh = Mesh(jax.devices(), ("data",))
x = jax.device_put(jnp.zeros((8, 32, 32, 3)), NamedSharding(mesh, P("data")))
for b in (False, True):
    m = ResNet(plan_from_width("resnet20", 4, 10), fusion_barrier=b)
    v = m.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))
    f = jax.jit(lambda p, x: jax.grad(lambda p: m.apply(
        {"params": p, "batch_stats": v["batch_stats"]}, x, train=True,
        mutable=["batch_stats"])[0].sum())(p))
    t = f.lower(v["params"], x).compile().as_text()
    print(len(jax.devices()), len(re.findall(r"= [^ ]+ all-reduce", t)))
"""
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu",
           "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    (d1, without), (d2, with_barrier) = [map(int, line.split())
                                         for line in out.stdout.split("\n")[:2]]
    assert d1 == d2 == 4 and without > 0  # BatchNorm statistics need all-reduces
    assert with_barrier == without
