import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.helpers import irregular_plan, n_params
from thinjax.cost import count
from thinjax.models.resnet import Block, Conv, ResNet, random_variables, variable_shapes
from thinjax.plan import ARCHS, plan_from_width


@pytest.mark.parametrize("width", [4, 16, 64])
@pytest.mark.parametrize("name", sorted(ARCHS))
def test_every_family_member_builds_and_runs(name, width):
    if name.startswith("resnet50") or name.startswith("resnet1") and ARCHS[name][0] == "bottleneck":
        plan = plan_from_width(name, width, base_width=64)  # w=4 release rule would give 0
    else:
        plan = plan_from_width(name, width)
    shapes = variable_shapes(plan)
    assert n_params(shapes["params"]) == count(plan).params
    if width > 4 and plan.depth > 60:
        return  # ResNet-101/110/152 wider than 4: shapes only, their compile is long (run at w=4)
    v = random_variables(plan)
    x = jnp.asarray(np.random.default_rng(1).standard_normal((2, 32, 32, 3)), jnp.float32)
    y = jax.jit(functools.partial(ResNet(plan).apply, train=False))(v, x)
    assert y.shape == (2, plan.num_classes) and bool(jnp.all(jnp.isfinite(y)))


def test_irregular_plan_trains_one_step_and_removed_block_is_identity():
    plan = irregular_plan()
    model = ResNet(plan)
    x = jnp.asarray(np.random.default_rng(0).standard_normal((4, 16, 16, 3)), jnp.float32)
    v = jax.jit(model.init)(jax.random.PRNGKey(0), x)
    assert "block1" not in v["params"]["stage1"]  # removed branch: no parameters
    assert n_params(v["params"]) == count(plan).params

    @jax.jit
    def loss_and_grad(params):
        def loss(p):
            y, _ = model.apply({**v, "params": p}, x, train=True, mutable=["batch_stats"])
            return jnp.mean(y ** 2), y
        return jax.value_and_grad(loss, has_aux=True)(params)

    (_, y), g = loss_and_grad(v["params"])
    assert y.shape == (4, 5)
    assert all(bool(jnp.all(jnp.isfinite(l))) for l in jax.tree.leaves(g))
    assert float(jnp.abs(g["stage2"]["block1"]["conv1"]["kernel"]).sum()) > 0
    # a removed block passes its (post-ReLU) input through unchanged
    block = Block((0,), 9, 1, False, Conv, nn.BatchNorm)
    h = jax.nn.relu(x[..., :1].repeat(9, -1))
    np.testing.assert_array_equal(block.apply({}, h), h)


def test_bfloat16_compute_keeps_float32_params_and_close_logits():
    plan = plan_from_width("resnet20", 8)
    x = jnp.asarray(np.random.default_rng(0).standard_normal((8, 32, 32, 3)), jnp.float32)
    v = random_variables(plan)
    y32 = jax.jit(ResNet(plan).apply)(v, x)
    m16 = ResNet(plan, dtype=jnp.bfloat16)
    v16 = jax.eval_shape(m16.init, jax.random.PRNGKey(0), x)
    assert all(l.dtype == jnp.float32 for l in jax.tree.leaves(v16))
    y16 = jax.jit(m16.apply)(v, x)
    assert y16.dtype == jnp.float32
    assert float(jnp.max(jnp.abs(y16 - y32))) < 0.1 * float(jnp.max(jnp.abs(y32))) + 0.05


def test_zero_init_last_bn_makes_blocks_start_as_identity():
    plan = plan_from_width("resnet20", 4)
    v = jax.jit(ResNet(plan, zero_init_last_bn=True).init)(jax.random.PRNGKey(0),
                                                          jnp.ones((1, 32, 32, 3)))
    for s in ("stage1", "stage2", "stage3"):
        for b in v["params"][s].values():
            assert float(jnp.abs(b["bn2"]["scale"]).sum()) == 0.0
            assert float(jnp.abs(b["bn1"]["scale"]).sum()) > 0.0


def test_bn_momentum_and_epsilon_are_used():
    plan = plan_from_width("resnet20", 4)
    x = jnp.asarray(np.random.default_rng(0).standard_normal((8, 32, 32, 3)) + 3.0, jnp.float32)
    v = jax.jit(ResNet(plan).init)(jax.random.PRNGKey(0), x)
    _, upd = jax.jit(functools.partial(ResNet(plan, bn_momentum=0.5).apply, train=True,
                                       mutable=["batch_stats"]))(v, x)
    m = upd["batch_stats"]["stem"]["bn"]["mean"]
    conv = jax.lax.conv_general_dilated(x, v["params"]["stem"]["conv"]["kernel"], (1, 1),
                                        [(1, 1), (1, 1)],
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))
    np.testing.assert_allclose(m, 0.5 * conv.mean(axis=(0, 1, 2)), rtol=1e-4, atol=1e-5)
    y1 = jax.jit(ResNet(plan, bn_epsilon=1e-5).apply)(v, x)
    y2 = jax.jit(ResNet(plan, bn_epsilon=10.0).apply)(v, x)
    assert float(jnp.max(jnp.abs(y1 - y2))) > 1e-3
