"""thinjax.ops.depthwise: depthwise convolutions as shifted multiply-adds.

* Values and gradients (input and kernel) equal a float64 NumPy depthwise convolution within
  the float32 rounding bound of their sums (n terms: n * 2^-24 * the sum of |terms|), for
  kernels 2, 3 and 7, strides 1 and 2, SAME / VALID / explicit asymmetric padding, kernel
  dilation; lax's grouped convolution meets the same bound (the reference is right).
* `conv_general_dilated` computes depthwise ones by the shifted sum and hands any other
  convolution to lax unchanged (bit-equal).
* thinjax.trace reads the shifted sum as the convolution it is: a network traced with it
  has the groups and the cost (params, MACs) it has with lax's grouped convolution.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from thinjax import trace as T
from thinjax.ops.depthwise import NAME, conv_general_dilated, depthwise_conv

EPS = 2.0 ** -24
NHWC = ("NHWC", "HWIO", "NHWC")
# (input spatial size, kernel, stride, padding, dilation)
CASES = [(8, 3, 1, "SAME", 1), (8, 3, 2, "SAME", 1), (7, 3, 2, ((1, 1), (1, 1)), 1),
         (9, 7, 1, ((3, 3), (3, 3)), 1), (9, 3, 1, "VALID", 2), (6, 2, 2, ((0, 1), (1, 0)), 1)]


def _pads(size, k, s, padding, d):
    if isinstance(padding, str):
        return tuple(lax.padtype_to_pads((size, size), ((k - 1) * d + 1,) * 2, (s, s),
                                         padding))
    return padding


def _taps(xp, k, s, d, out):
    """(i, j, the window of tap (i, j)) over the padded input `xp`, output size `out`."""
    for i in range(k):
        for j in range(k):
            yield i, j, xp[:, i * d:i * d + (out - 1) * s + 1:s,
                           j * d:j * d + (out - 1) * s + 1:s]


def reference(x, w, s, pads, d):
    """float64 (output, |output| bound, d/dx and d/dw of <output, g>, and their bounds)."""
    x, w = x.astype(np.float64), w.astype(np.float64)[:, :, 0]
    k = w.shape[0]
    xp = np.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
    out = (xp.shape[1] - (k - 1) * d - 1) // s + 1
    y, ya = 0.0, 0.0
    for i, j, t in _taps(xp, k, s, d, out):
        y, ya = y + t * w[i, j], ya + np.abs(t * w[i, j])
    g = np.random.default_rng(3).standard_normal(y.shape)
    dxp, dxa = np.zeros_like(xp), np.zeros_like(xp)
    dw, dwa = np.zeros_like(w), np.zeros_like(w)
    for i, j, t in _taps(xp, k, s, d, out):
        sl = (slice(None), slice(i * d, i * d + (out - 1) * s + 1, s),
              slice(j * d, j * d + (out - 1) * s + 1, s))
        dxp[sl] += w[i, j] * g
        dxa[sl] += np.abs(w[i, j] * g)
        dw[i, j], dwa[i, j] = (t * g).sum((0, 1, 2)), np.abs(t * g).sum((0, 1, 2))
    h, wd = x.shape[1:3]
    crop = (slice(None), slice(pads[0][0], pads[0][0] + h), slice(pads[1][0], pads[1][0] + wd))
    terms = g.size // g.shape[-1]
    return (y, k * k * EPS * ya, dxp[crop], k * k * EPS * dxa[crop], dw[:, :, None],
            terms * EPS * dwa[:, :, None], g.astype(np.float32))


def _inputs(size, k, c=5, n=2):
    r = np.random.default_rng(size * 10 + k)
    return (r.standard_normal((n, size, size, c)).astype(np.float32),
            r.standard_normal((k, k, 1, c)).astype(np.float32))


def _lax(x, w, s, padding, d):
    return lax.conv_general_dilated(x, w, (s, s), padding, rhs_dilation=(d, d),
                                    dimension_numbers=NHWC, feature_group_count=x.shape[-1])


@pytest.mark.parametrize("size,k,s,padding,d", CASES)
def test_values_and_gradients_match_float64_within_rounding(size, k, s, padding, d):
    x, w = _inputs(size, k)
    y, yb, dx, dxb, dw, dwb, g = reference(x, w, s, _pads(size, k, s, padding, d), d)
    for f in (lambda x, w: depthwise_conv(x, w, (s, s), padding, (d, d)),
              lambda x, w: _lax(x, w, s, padding, d)):
        got = np.asarray(jax.jit(f)(x, w))
        assert got.shape == y.shape and np.all(np.abs(got - y) <= yb + 1e-30)
        gx, gw = jax.jit(jax.grad(lambda x, w, f=f: jnp.vdot(f(x, w), g), (0, 1)))(x, w)
        assert np.all(np.abs(np.asarray(gx) - dx) <= dxb + 1e-30)
        assert np.all(np.abs(np.asarray(gw) - dw) <= dwb + 1e-30)
    assert np.abs(y).max() > 1 and np.abs(dw).max() > 1   # not trivially zero


def test_bfloat16_sums_in_float32_and_rounds_once():
    x, w = _inputs(8, 7, c=16)
    xb, wb = jnp.asarray(x, jnp.bfloat16), jnp.asarray(w, jnp.bfloat16)
    y = np.asarray(depthwise_conv(xb, wb, (1, 1), "SAME"))
    assert y.dtype == jnp.bfloat16
    exact = np.asarray(depthwise_conv(xb.astype(np.float32), wb.astype(np.float32)))
    err = np.abs(y.astype(np.float32) - exact)
    assert np.all(err <= 2.0 ** -8 * np.abs(exact) + 1e-30)   # bfloat16's half-ulp: 2^-8
    assert err.max() > 0


def test_conv_general_dilated_routes_depthwise_to_the_shifted_sum_and_the_rest_to_lax():
    x, w = _inputs(8, 3, c=4)
    dw = jax.make_jaxpr(lambda x, w: conv_general_dilated(
        x, w, (1, 1), "SAME", dimension_numbers=NHWC, feature_group_count=4))(x, w)
    assert [e.params.get("name") for e in dw.eqns] == [NAME]
    w2 = np.random.default_rng(0).standard_normal((3, 3, 2, 4)).astype(np.float32)
    pad = ((1, 1), (1, 1))
    for kw in ({"feature_group_count": 2}, {"lhs_dilation": (2, 2), "feature_group_count": 4}):
        rhs = w2 if kw["feature_group_count"] == 2 else w
        ours = jax.make_jaxpr(lambda x, w, kw=kw: conv_general_dilated(
            x, w, (1, 1), pad, dimension_numbers=NHWC, **kw))(x, rhs)
        assert [e.primitive.name for e in ours.eqns] == ["conv_general_dilated"]
        np.testing.assert_array_equal(
            conv_general_dilated(x, rhs, (1, 1), pad, dimension_numbers=NHWC, **kw),
            lax.conv_general_dilated(x, rhs, (1, 1), pad, dimension_numbers=NHWC, **kw))


class Block(nn.Module):
    """1x1 expansion, depthwise 3x3 (stride 2), 1x1 projection, BN between."""
    shifted: bool

    @nn.compact
    def __call__(self, x):
        fast = conv_general_dilated if self.shifted else None
        x = nn.relu(nn.Conv(12, (1, 1), name="expand")(x))
        x = nn.Conv(12, (3, 3), 2, padding=1, feature_group_count=12, use_bias=False,
                    conv_general_dilated=fast, name="dw")(x)
        x = nn.relu(nn.BatchNorm(use_running_average=True, name="bn")(x))
        return nn.Conv(6, (1, 1), name="project")(x)


def test_trace_of_the_shifted_sum_is_the_trace_of_the_grouped_convolution():
    x = jax.random.normal(jax.random.key(1), (1, 8, 8, 3))
    v = Block(False).init(jax.random.key(0), x)
    ref, ours = T.trace(Block(False), v, x), T.trace(Block(True), v, x)
    assert not ours.unsupported and ours.refused == ref.refused   # the output's width
    assert {n: sorted(g.producers + g.consumers) for n, g in ours.groups.items()} == \
        {n: sorted(g.producers + g.consumers) for n, g in ref.groups.items()}
    (name, group), = ((n, g) for n, g in ours.groups.items() if g.size == 12)
    assert "dw/kernel" in " ".join(str(m) for m in group.producers + group.consumers)
    macs = 64 * 3 * 12 + 16 * 9 * 12 + 16 * 12 * 6
    assert ours.cost.at({}) == ref.cost.at({}) == (sum(a.size for a in
                                                       jax.tree.leaves(v["params"])), macs)
    assert ours.cost.at({name: 6})[1] == ref.cost.at({name: 6})[1] == macs // 2
    small_model, small = T.materialize(ours, {name: np.arange(12) < 6}, v)
    assert small["params"]["dw"]["kernel"].shape == (3, 3, 1, 6)
    masked = T.mask_variables(ours, {name: np.arange(12) < 6}, v)
    y = np.asarray(Block(True).apply(masked, x))
    noise = np.abs(np.asarray(Block(True).apply(masked, np.nextafter(x, np.inf))) - y).max()
    assert 0 < noise < 1e-5 * np.abs(y).max()     # float32 rounding, not a real change
    np.testing.assert_allclose(small_model.apply(small, x), y, rtol=0, atol=4 * noise)
