"""thinjax.ops.dense_conv: nn.Conv's ordinary convolutions on thinjax.ops.conv.conv2d.

* `conv_general_dilated` computes NHWC x HWIO convolutions of one group, square stride and
  even zero padding (explicit, "SAME" or "VALID") by `conv2d` in a jit named `NAME`,
  agreeing with lax to float32 rounding; every other convolution goes to lax unchanged
  (one lax primitive, bit-equal).
* MobileNetV2 (width 0.25) with every ordinary convolution on oneDNN gives the logits and
  parameter gradients of the same network on XLA's convolution (nn.Conv's default) to
  within what moving the input one float32 ulp changes on XLA's path (measured, 8 seeds:
  0.59-0.83 of that band for the eval logits on the AVX-512 EPYC). The train-mode
  gradient is ill-conditioned (its largest changes for a one-ulp input move reach 0.3 of
  its RMS; oneDNN's distance to XLA's in norm was up to 12x the band on the AVX2 EPYC), so
  it is compared by the median element: 0.9-2.1x the band's median (seeds 0-5, AVX2).
* thinjax.trace reads the named jit as the convolution it is: MobileNetV2's groups and
  cost (params, MACs) are the same on oneDNN's path, on ``THINJAX_CONV=xla`` and with
  nn.Conv's own lax convolution.
"""

from __future__ import annotations

import collections

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from tests.helpers import BUILDABLE
from thinjax import trace as T
from thinjax.models.examples import MobileNetV2, random_variables
from thinjax.ops import dense_conv
from thinjax.ops.dense_conv import NAME, conv_general_dilated

needs_onednn = pytest.mark.skipif(not BUILDABLE, reason="oneDNN kernels build on Linux x86-64 "
                                                        "with a C++ compiler only")
NHWC = ("NHWC", "HWIO", "NHWC")
BAND = 4.0     # oneDNN vs XLA <= BAND x (XLA's change for a one-ulp input move); see above
N_CONVS = 35   # MobileNetV2's ordinary convolutions: stem, 16 expansions, 17 projections, last


def _eqns(closed) -> list:
    """Every equation of a jaxpr, nested calls included."""
    out = []
    for e in closed.eqns:
        out.append(e)
        for p in e.params.values():
            inner = getattr(p, "jaxpr", p)
            if hasattr(inner, "eqns"):
                out += _eqns(inner)
    return out


def _random(shape, seed):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


@pytest.mark.parametrize("stride,padding", [(1, ((1, 1), (1, 1))), (2, ((1, 1), (1, 1))),
                                            (2, "VALID"), (1, "SAME"), (2, "SAME")])
def test_plain_convolutions_go_to_conv2d_and_agree_with_lax(stride, padding):
    x, w = _random((4, 9, 9, 5), 0), _random((3, 3, 5, 7), 1)

    def ours(x, w):
        return conv_general_dilated(x, w, (stride, stride), padding, dimension_numbers=NHWC)

    def ref(x, w):
        return lax.conv_general_dilated(x, w, (stride, stride), padding,
                                        dimension_numbers=NHWC)

    (eqn,) = jax.make_jaxpr(ours)(x, w).eqns
    assert eqn.params["name"] == NAME
    y, y_ref = np.asarray(ours(x, w)), np.asarray(ref(x, w))
    assert y.shape == y_ref.shape
    # 45-term sums of N(0, 1) products: float32 rounding is ~1e-6 of the largest output
    np.testing.assert_allclose(y, y_ref, rtol=0, atol=1e-5 * np.abs(y_ref).max())
    g = jax.grad(lambda x, w: jnp.sum(jnp.sin(ours(x, w))), (0, 1))(x, w)
    g_ref = jax.grad(lambda x, w: jnp.sum(jnp.sin(ref(x, w))), (0, 1))(x, w)
    for a, b in zip(g, g_ref):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5 * np.abs(np.asarray(b)).max())


@pytest.mark.parametrize("kind", ["depthwise", "grouped", "rhs dilation", "lhs dilation",
                                  "uneven padding", "padding per axis", "non-square stride",
                                  "NCHW", "precision", "SAME, even kernel"])
def test_other_convolutions_go_to_lax_unchanged(kind):
    x, w = _random((2, 8, 8, 6), 0), _random((3, 3, 6, 4), 1)
    args = dict(window_strides=(1, 1), padding=((1, 1), (1, 1)), dimension_numbers=NHWC)
    change = {"depthwise": dict(feature_group_count=6),
              "grouped": dict(feature_group_count=2),
              "rhs dilation": dict(rhs_dilation=(2, 2)),
              "lhs dilation": dict(lhs_dilation=(2, 2)),
              "uneven padding": dict(padding=((0, 1), (0, 1))),
              "padding per axis": dict(padding=((1, 1), (2, 2))),
              "non-square stride": dict(window_strides=(1, 2)),
              "NCHW": dict(dimension_numbers=("NCHW", "OIHW", "NCHW")),
              "precision": dict(precision=lax.Precision.HIGHEST),
              "SAME, even kernel": dict(padding="SAME")}[kind]
    args.update(change)
    if kind == "depthwise":
        w = _random((3, 3, 1, 6), 1)
    elif kind == "grouped":
        w = _random((3, 3, 3, 4), 1)
    elif kind == "NCHW":
        x, w = jnp.transpose(x, (0, 3, 1, 2)), jnp.transpose(w, (3, 2, 0, 1))
    elif kind == "SAME, even kernel":
        w = _random((2, 2, 6, 4), 1)
    (eqn,) = jax.make_jaxpr(lambda x, w: conv_general_dilated(x, w, **args))(x, w).eqns
    assert eqn.primitive.name == "conv_general_dilated"
    np.testing.assert_array_equal(conv_general_dilated(x, w, **args),
                                  lax.conv_general_dilated(x, w, **args))


def _logits_and_grads(model, variables, x, y):
    """Eval-mode logits, and the flattened gradient of the train-mode cross-entropy with
    respect to the parameters."""
    def loss(p):
        logits, _ = model.apply({"params": p, "batch_stats": variables["batch_stats"]}, x,
                                train=True, mutable=["batch_stats"])
        return jnp.mean(jax.nn.logsumexp(logits, -1)
                        - jnp.take_along_axis(logits, y[:, None], 1)[:, 0])
    g = jax.grad(loss)(variables["params"])
    return (model.apply(variables, x, train=False),
            jnp.concatenate([t.ravel() for t in jax.tree.leaves(g)]))


def _on_lax(variables, x, y):
    with nn.intercept_methods(dense_conv.as_lax):
        return _logits_and_grads(MobileNetV2(width=0.25), variables, x, y)


# compiled once for both seeds
_OURS = jax.jit(lambda v, x, y: _logits_and_grads(MobileNetV2(width=0.25), v, x, y))
_REF = jax.jit(_on_lax)


@needs_onednn
@pytest.mark.parametrize("seed", [0, 1])
def test_mobilenetv2_on_onednn_gives_xlas_logits_and_gradients(seed):
    model, shape, ours, ref = MobileNetV2(width=0.25), (8, 32, 32, 3), _OURS, _REF
    v, x = random_variables(model, shape, seed), np.asarray(_random(shape, seed))
    y = jnp.asarray(np.random.default_rng(seed).integers(0, 10, shape[0]), jnp.int32)
    # every ordinary convolution on oneDNN (its forward in the eval and the train pass,
    # both its gradients), none left to lax; the reference has no oneDNN call
    calls = [collections.Counter(e.params.get("target_name", e.primitive.name)
                                 for e in _eqns(jax.make_jaxpr(f)(v, x, y).jaxpr)
                                 if e.primitive.name in ("ffi_call", "conv_general_dilated"))
             for f in (ours, ref)]
    assert calls[0] == {"thinjax_onednn_conv_fwd": 2 * N_CONVS, "thinjax_onednn_conv_bwd_data":
                        N_CONVS, "thinjax_onednn_conv_bwd_weights": N_CONVS}
    assert set(calls[1]) == {"conv_general_dilated"}
    (l0, g0), (l1, g1) = (map(np.asarray, ref(v, xi, y)) for xi in (x, np.nextafter(
        x, np.float32(np.inf))))
    _, g2 = map(np.asarray, ref(v, np.nextafter(x, np.float32(-np.inf)), y))
    l, g = map(np.asarray, ours(v, x, y))
    band_l = np.abs(l1 - l0).max()
    assert 0 < band_l < 1e-5 * np.abs(l0).max()     # float32 noise, not a real change
    assert np.abs(l - l0).max() <= BAND * band_l
    # the train-mode gradient is ill-conditioned: a one-ulp input move changes a few of its
    # elements by up to 0.3 of its RMS; the typical element (the median difference) is
    # what a wrong kernel would move by orders of magnitude
    med = lambda a, b: float(np.median(np.abs(a - b)))  # noqa: E731
    assert 0 < med(g, g0) <= BAND * max(med(g1, g0), med(g2, g0))


def _summary(tr: T.Trace) -> dict:
    return {n: (g.size, sorted((s.col, s.path, s.axis, s.rows.tolist()) for s in g.slices))
            for n, g in tr.groups.items()}


def test_the_trace_reads_the_named_convolution_as_lax_convolution(monkeypatch):
    model, shape = MobileNetV2(width=0.25), (1, 32, 32, 3)
    v, x = random_variables(model, shape), np.zeros(shape, np.float32)
    closed = jax.make_jaxpr(lambda v, x: model.apply(v, x, train=False))(v, x)
    assert sum(e.params.get("name") == NAME for e in _eqns(closed.jaxpr)) == N_CONVS
    traces = {"auto": T.trace(model, v, x, train=False)}
    with nn.intercept_methods(dense_conv.as_lax):
        traces["lax"] = T.trace(model, v, x, train=False)
    monkeypatch.setenv("THINJAX_CONV", "xla")
    traces["xla"] = T.trace(model, v, x, train=False)
    for tr in traces.values():
        assert [r.name for r in tr.refused] == ["head"] and tr.unsupported == {}
        assert _summary(tr) == _summary(traces["lax"]) and len(tr.groups) == 23
        cost = tr.net(inexact=True).cost()
        # configs/quick_mobilenetv2.py's and tests/test_protocol_examples.py's figures
        assert (cost.params, cost.macs) == (250_922, 9_481_216)
