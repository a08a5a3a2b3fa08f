"""thinjax.ops: oneDNN convolutions on XLA:CPU against XLA's own, and how they are chosen."""

import fnmatch
import os
import re
import subprocess
import sys
import tomllib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.helpers import BUILDABLE, ROOT
from thinjax import cache
from thinjax.models.resnet import ResNet, random_variables
from thinjax.ops import build, conv
from thinjax.plan import plan_from_width

needs_onednn = pytest.mark.skipif(not BUILDABLE, reason="oneDNN kernels build on Linux x86-64 "
                                                        "with a C++ compiler only")

# (batch, size, in channels, out channels, kernel, stride): every conv shape a ResNet has,
# including odd sizes and widths that are not multiples of 8 (pruned networks).
GEOMETRIES = [(4, 8, 16, 16, 3, 1), (3, 15, 5, 7, 3, 2), (2, 9, 6, 11, 1, 2),
              (2, 20, 3, 8, 7, 2), (2, 7, 12, 24, 1, 1)]


@needs_onednn
def test_kernels_build_and_are_the_default_here():
    assert conv.resolve("auto", jnp.float32) == "onednn", conv.status()
    assert conv.status().startswith("onednn (oneDNN 3.")


@needs_onednn
@pytest.mark.parametrize("geom", GEOMETRIES, ids=lambda g: "b{}s{}c{}-{}k{}st{}".format(*g))
def test_values_and_gradients_match_xla(geom):
    n, size, ci, co, k, stride = geom
    r = np.random.default_rng(sum(geom))
    x = jnp.asarray(r.standard_normal((n, size, size, ci)), jnp.float32)
    w = jnp.asarray(r.standard_normal((k, k, ci, co)) / np.sqrt(k * k * ci), jnp.float32)
    pad = (k - 1) // 2
    y_ref, vjp_ref = jax.vjp(lambda a, b: conv.xla_conv2d(a, b, stride, pad), x, w)
    y, vjp = jax.jit(lambda a, b: jax.vjp(
        lambda a, b: conv.conv2d(a, b, stride, pad, "onednn"), a, b))(x, w)
    dy = jnp.asarray(r.standard_normal(y_ref.shape), jnp.float32)
    assert y.shape == y_ref.shape
    for got, want in zip((y, *vjp(dy)), (y_ref, *vjp_ref(dy))):
        scale = float(jnp.max(jnp.abs(want)))
        assert float(jnp.max(jnp.abs(got - want))) <= 2e-6 * scale + 1e-7
    # not XLA in disguise: the compiled step calls the custom call
    hlo = jax.jit(lambda a, b: conv.conv2d(a, b, stride, pad, "onednn")).lower(x, w).as_text()
    assert "thinjax_onednn_conv_fwd" in hlo


STRIDED_1X1 = """
import jax, jax.numpy as jnp, numpy as np
from thinjax import cpu
from thinjax.ops import conv
cpu.enable()
for ci in (1, 3, 4, 6):
    r = np.random.default_rng(ci)
    x = jnp.asarray(r.standard_normal((32, 16, 16, ci)), jnp.float32)
    w = jnp.asarray(r.standard_normal((1, 1, ci, 8)), jnp.float32)
    f = lambda impl: jax.jit(jax.grad(lambda w: (conv.conv2d(x, w, 2, 0, impl) ** 2).sum()))
    want, g = f("xla")(w), f("onednn")
    for _ in range(30):
        got = g(w)
    assert float(jnp.max(jnp.abs(got - want))) <= 1e-5 * float(jnp.max(jnp.abs(want)))
print("ok")
"""


@needs_onednn
def test_strided_1x1_kernel_gradient_keeps_the_heap_intact():
    """A 1x1 stride-2 kernel gradient with fewer input channels than a SIMD block, 30 times
    under glibc's heap checks and one OpenMP thread: oneDNN's own strided path overran a
    buffer there (AVX2: an abort within a few calls; with threads, a kernel spinning
    forever, which hung a training run: conv._bwd takes the strided samples instead)."""
    env = {**os.environ, "MALLOC_CHECK_": "3", "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-c", STRIDED_1X1], env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]


@needs_onednn
def test_resnet_logits_and_gradients_match_xla_convolutions():
    plan = plan_from_width("resnet20", 4, 10)
    v = random_variables(plan, seed=1)
    x = jnp.asarray(np.random.default_rng(0).standard_normal((8, 32, 32, 3)), jnp.float32)
    outs = {}
    for impl in ("onednn", "xla"):
        model = ResNet(plan, conv_impl=impl)

        def loss(p, model=model):
            logits, _ = model.apply({"params": p, "batch_stats": v["batch_stats"]}, x,
                                    train=True, mutable=["batch_stats"])
            return jnp.mean(logits ** 2)
        logits = jax.jit(lambda v, x, m=model: m.apply(v, x))(v, x)
        outs[impl] = (logits, jax.jit(jax.grad(loss))(v["params"]))
    (la, ga), (lb, gb) = outs["onednn"], outs["xla"]
    assert float(jnp.max(jnp.abs(la - lb))) < 1e-5
    ka, kb = (g["stage1"]["block0"]["conv1"]["kernel"] for g in (ga, gb))
    assert float(jnp.max(jnp.abs(ka - kb))) <= 1e-4 * float(jnp.max(jnp.abs(kb)))


@needs_onednn
def test_vmap_runs_per_example():
    r = np.random.default_rng(0)
    x = jnp.asarray(r.standard_normal((3, 2, 6, 6, 4)), jnp.float32)
    w = jnp.asarray(r.standard_normal((3, 3, 4, 5)), jnp.float32)
    got = jax.vmap(lambda a: conv.conv2d(a, w, 1, 1, "onednn"))(x)
    want = jax.vmap(lambda a: conv.xla_conv2d(a, w, 1, 1))(x)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)


def test_choice_and_bad_input(monkeypatch):
    monkeypatch.setenv(conv.ENV, "xla")
    assert conv.resolve("auto") == "xla"  # the opt-out
    assert conv.status().startswith("xla")
    monkeypatch.setenv(conv.ENV, "fast")
    with pytest.raises(ValueError, match="unknown convolution implementation 'fast'.*auto, xla"):
        conv.resolve("auto")
    monkeypatch.delenv(conv.ENV)
    with pytest.raises(build.KernelUnavailable, match="float16.*float32 and bfloat16"):
        conv.resolve("onednn", jnp.float16)
    assert conv.resolve("auto", jnp.float16) == "xla"  # silently: a dtype choice, not a fault


BUILD_TWICE = """
import os, sys, time
from thinjax import cpu
cpu.enable()
from thinjax.ops import build, conv
lib = build.load()
path = build._library_path()
print(path, os.path.getmtime(path), conv.status())
"""


@needs_onednn
def test_every_file_the_kernel_build_reads_is_package_data():
    """An installed (not editable) thinjax builds its kernels from the package's own files:
    every source and header the build compiles or hashes is package data in pyproject.toml,
    and every local header a source includes is one the build hashes (rowconv.h was
    missing from the wheel until 2026-12-07: a wheel install fell back to XLA's
    convolutions)."""
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        data = tomllib.load(f)["tool"]["setuptools"]["package-data"]["thinjax"]
    files = (*build.SOURCES, *build.HEADERS)
    for path in files:
        rel = os.path.relpath(path, os.path.join(ROOT, "thinjax"))
        assert any(fnmatch.fnmatch(rel, pattern) for pattern in data), (rel, data)
    hashed = {p.name for p in build.HEADERS}
    for path in files:
        for name in re.findall(r'^#include "([^"]+)"', path.read_text(), re.M):
            if (path.parent / name).exists():  # thinjax's own (oneDNN's come from its wheel)
                assert name in hashed, (path.name, name)


def test_build_is_cached_atomic_and_recovers_from_a_corrupt_library(tmp_path):
    env = {**os.environ, "THINJAX_CACHE": str(tmp_path), "JAX_PLATFORMS": "cpu"}
    run = lambda: subprocess.run([sys.executable, "-c", BUILD_TWICE], env=env, check=True,
                                 capture_output=True, text=True).stdout.split()
    path, mtime, *status = run()
    assert status[0] == "onednn" and os.path.exists(path)
    assert sorted(os.listdir(os.path.dirname(path))) == [
        ".build.lock", os.path.basename(path), os.path.basename(path) + ".sha256"]
    assert run()[1] == mtime  # the second process loads the cached library
    with open(path, "wb") as f:
        f.write(b"\x7fELF truncated")
    path2, mtime2, *status2 = run()
    assert path2 == path and mtime2 != mtime and status2[0] == "onednn"


MULTI_DEVICE = """
import jax.numpy as jnp
from thinjax import cpu
from thinjax.ops import conv
cpu.enable()
print(conv.resolve("auto", jnp.float32), "|", conv.status())
"""


def test_several_cpu_devices_keep_xla_convolutions():
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
           "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, "-c", MULTI_DEVICE], env=env, check=True,
                         capture_output=True, text=True).stdout
    assert out.startswith("xla | xla (2 devices")


UNWRITABLE = """
import logging, jax.numpy as jnp
from thinjax import cpu
from thinjax.ops import conv
cpu.enable()
print(conv.resolve("auto", jnp.float32), "|", conv.status())
"""


@needs_onednn
def test_an_unwritable_cache_falls_back_to_xla_with_the_reason(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    env = {**os.environ, "THINJAX_CACHE": str(blocker / "cache"), "JAX_PLATFORMS": "cpu"}
    res = subprocess.run([sys.executable, "-c", UNWRITABLE], env=env, check=True,
                         capture_output=True, text=True)
    assert res.stdout.startswith("xla | xla (cannot build into")
    assert "(set THINJAX_CACHE to a writable folder)" in res.stdout
    assert "XLA's convolutions, not oneDNN's" in res.stderr  # said once, as a warning


def test_one_cache_root_and_the_old_variable_is_ignored(monkeypatch, tmp_path, caplog):
    monkeypatch.delenv("THINJAX_CACHE", raising=False)
    monkeypatch.delenv("THINJAX_CACHE_DIR", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache.root() == str(tmp_path / "home" / ".cache" / "thinjax")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache.root() == str(tmp_path / "xdg" / "thinjax")
    monkeypatch.setenv("THINJAX_CACHE", str(tmp_path / "mine"))
    assert cache.root() == str(tmp_path / "mine")
    assert build.cache_dir() == tmp_path / "mine" / "ops"
    assert cache.zoo_dir() == str(tmp_path / "mine" / "zoo")
    # the kernels' old variable is ignored, with one warning naming THINJAX_CACHE
    monkeypatch.setattr(cache, "_WARNED", [])
    monkeypatch.setenv("THINJAX_CACHE_DIR", str(tmp_path / "old"))
    with caplog.at_level("WARNING", logger="thinjax.cache"):
        assert build.cache_dir() == tmp_path / "mine" / "ops" and cache.root() == str(
            tmp_path / "mine")
    assert [r.getMessage() for r in caplog.records] == [
        f"thinjax: THINJAX_CACHE_DIR is no longer read; set THINJAX_CACHE (the root of every "
        f"thinjax cache, now {tmp_path / 'mine'}) instead"]
