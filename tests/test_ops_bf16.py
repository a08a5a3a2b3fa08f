"""thinjax.ops in bfloat16: oneDNN's bf16 convolutions against XLA's, within the band that a
one-ulp change of the inputs makes, and a few bf16 training steps through them."""

import io
import os
import subprocess
import sys
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tests.helpers import BUILDABLE
from thinjax import pixels
from thinjax.models.resnet import build_model
from thinjax.ops import conv
from thinjax.plan import plan_from_width


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            return {w for line in f if line.startswith("flags") for w in line.split()}
    except OSError:
        return set()


# oneDNN computes bfloat16 with native instructions only with AVX-512 BF16 or AMX
needs_onednn = pytest.mark.skipif(
    not BUILDABLE or not {"avx512_bf16", "amx_bf16"} & _cpu_flags(),
    reason="oneDNN's bfloat16 kernels: Linux x86-64, a C++ compiler, AVX-512 BF16 or AMX")
SAMPLE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "thinjax",
                      "assets", "cifar10_sample.zip")

# (batch, size, in channels, out channels, kernel, stride): ResNet conv shapes, with odd
# sizes and widths that are not multiples of 8 (pruned networks), and the 7x7 stem
GEOMETRIES = [(4, 8, 16, 16, 3, 1), (3, 15, 5, 7, 3, 2), (2, 9, 6, 11, 1, 2),
              (2, 20, 3, 8, 7, 2), (2, 7, 12, 24, 1, 1)]


def one_ulp_up(x):
    """`x` (bfloat16) with every element one ulp further from zero."""
    bits = jax.lax.bitcast_convert_type(x, jnp.uint16)
    return jax.lax.bitcast_convert_type(bits + jnp.uint16(1), jnp.bfloat16)


def conv_and_grads(impl: str, x, w, dy, stride: int, pad: int):
    """(y, dx, dk) of `impl`'s convolution of bf16 `x` with float32 `w`, as float32."""
    y, vjp = jax.jit(lambda a, b: jax.vjp(
        lambda a, b: conv.conv2d(a, b, stride, pad, impl), a, b))(x, w)
    return [np.asarray(t, np.float32) for t in (y, *vjp(dy))]


@needs_onednn
def test_bfloat16_is_onednn_here():
    assert conv.resolve("auto", jnp.bfloat16) == "onednn", conv.status(jnp.bfloat16)
    assert conv.status(jnp.bfloat16).startswith("onednn (oneDNN 3.")
    assert any(t in conv.bf16_kernel() for t in conv.BF16_NATIVE)


NO_BF16_ISA = """
import jax.numpy as jnp
from thinjax import cpu
from thinjax.ops import conv
cpu.enable()
print(conv.resolve("auto", jnp.float32), "|", conv.status(jnp.bfloat16))
"""


@needs_onednn
@pytest.mark.parametrize("isa,kernel", [("AVX512_CORE", "jit_bf16:avx512_core"),
                                        ("AVX2", "none")])
def test_without_native_bfloat16_kernels_bfloat16_keeps_xla(isa, kernel):
    # oneDNN limited to an older ISA, as on a CPU without AVX-512 BF16: it would emulate
    # bfloat16 (AVX-512) or has no bfloat16 convolution (AVX2); float32 still uses it
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": isa, "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, "-c", NO_BF16_ISA], env=env, check=True,
                         capture_output=True, text=True).stdout
    assert out.startswith("onednn | xla (no native bfloat16 convolution in oneDNN on this "
                          f"CPU (it would run {kernel}"), out


@needs_onednn
@pytest.mark.parametrize("geom", GEOMETRIES, ids=lambda g: "b{}s{}c{}-{}k{}st{}".format(*g))
def test_bf16_values_and_gradients_match_xla_within_the_one_ulp_band(geom):
    n, size, ci, co, k, stride = geom
    r = np.random.default_rng(sum(geom))
    x = jnp.asarray(r.standard_normal((n, size, size, ci)), jnp.bfloat16)
    w = jnp.asarray(r.standard_normal((k, k, ci, co)) / np.sqrt(k * k * ci), jnp.float32)
    pad = (k - 1) // 2
    out = (n, (size + 2 * pad - k) // stride + 1, (size + 2 * pad - k) // stride + 1, co)
    dy = jnp.asarray(r.standard_normal(out), jnp.bfloat16)
    want = conv_and_grads("xla", x, w, dy, stride, pad)
    # the band: XLA's own results when its activation inputs (x, dy) move by one bf16 ulp
    moved = conv_and_grads("xla", one_ulp_up(x), w, one_ulp_up(dy), stride, pad)
    got = conv_and_grads("onednn", x, w, dy, stride, pad)
    for name, g, wt, m in zip(("y", "dx", "dk"), got, want, moved):
        band = np.abs(m - wt).max()
        assert band > 0
        assert np.abs(g - wt).max() <= band, (name, np.abs(g - wt).max(), band)
    # computed by oneDNN in bf16, with a float32 kernel in and a float32 kernel gradient out
    f = jax.jit(jax.grad(lambda a, b: conv.conv2d(a, b, stride, pad, "onednn").astype(
        jnp.float32).sum(), argnums=(0, 1)))
    hlo = f.lower(x, w).as_text()
    assert "thinjax_onednn_conv_bwd_data" in hlo and "thinjax_onednn_conv_bwd_weights" in hlo
    hlo = jax.jit(lambda a, b: conv.conv2d(a, b, stride, pad, "onednn")).lower(x, w).as_text()
    assert "thinjax_onednn_conv_fwd" in hlo
    gx, gw = f(x, w)
    assert (gx.dtype, gw.dtype) == (jnp.bfloat16, jnp.float32)


def sample_batch(n: int = 64):
    """`n` normalised 32-px training images of the bundled CIFAR-10 sample and their labels
    (decoded with PIL: no TensorFlow needed)."""
    from PIL import Image  # only here: the rest of the file needs no image library
    with zipfile.ZipFile(SAMPLE) as z:
        names = sorted(f for f in z.namelist() if f.startswith("train/") and
                       f.endswith(".jpg"))
        classes = sorted({f.split("/")[1] for f in names})
        pick = names[:: max(1, len(names) // n)][:n]
        imgs = [np.asarray(Image.open(io.BytesIO(z.read(f))).convert("RGB")) for f in pick]
    x = (np.stack(imgs).astype(np.float32) / 255 - pixels.MEAN) / pixels.STD
    y = np.array([classes.index(f.split("/")[1]) for f in pick])
    return jnp.asarray(x, jnp.float32), jax.nn.one_hot(y, len(classes))


@needs_onednn
def test_bf16_training_steps_through_onednn():
    x, y = sample_batch()
    model = build_model(plan_from_width("resnet20", 4, 10), dtype="bfloat16")
    v = jax.jit(model.init)(jax.random.PRNGKey(0), x[:1])
    tx = optax.sgd(0.05, momentum=0.9)

    @jax.jit
    def step(p, bs, opt):
        def loss(p):
            logits, upd = model.apply({"params": p, "batch_stats": bs}, x, train=True,
                                      mutable=["batch_stats"])
            return optax.softmax_cross_entropy(logits, y).mean(), upd
        (l, upd), g = jax.value_and_grad(loss, has_aux=True)(p)
        u, opt = tx.update(g, opt, p)
        return optax.apply_updates(p, u), upd["batch_stats"], opt, l

    p, bs, opt = v["params"], v["batch_stats"], tx.init(v["params"])
    assert "thinjax_onednn_conv_bwd_data" in step.lower(p, bs, opt).as_text()
    losses = []
    for _ in range(8):
        p, bs, opt, l = step(p, bs, opt)
        losses.append(float(l))
    assert np.all(np.isfinite(losses))
    # parameters, BN statistics and optimizer state stay float32
    leaves = jax.tree_util.tree_leaves((p, bs, opt))
    assert {leaf.dtype for leaf in leaves if hasattr(leaf, "dtype")} == {jnp.dtype("float32")}
    # 64 images memorised: measured 2.83, 2.70, 2.57, 2.38, 2.24, 2.17, ... 2.13 (AMD EPYC)
    assert all(b < a for a, b in zip(losses, losses[1:])), losses
    assert losses[-1] < 0.85 * losses[0], losses
