"""The commands' persistent compilation cache (thinjax.commands.compilation_cache): the first
run of a command fills jax-compile/<machine>/ in the thinjax cache, a second run of the same
command compiles nothing (every program it compiles is read from the cache: JAX's own log
says so), one setting turns it off; and an evaluation's start-up imports neither Keras,
optax nor orbax (thinjax.commands.import_tensorflow, benchmarks/startup.py), nor, when the
split's inputs are kept (thinjax.split_cache), TensorFlow."""

import json
import os
import subprocess
import sys

from tests.helpers import ROOT
from thinjax import cache, cpu

ASSET = os.path.join(ROOT, "thinjax", "assets", "resnet20_width4_cifar10_ema.safetensors")
# the real command as __main__, saying at exit which of these modules it imported
HEAVY = ("keras", "matplotlib", "optax", "orbax.checkpoint", "tensorflow")
EVALUATE = ("import atexit, json, runpy, sys\n"
            f"atexit.register(lambda: print('imported', json.dumps([m for m in {HEAVY!r} "
            "if m in sys.modules]), file=sys.stderr))\n"
            "sys.argv = ['thinjax.evaluate'] + sys.argv[1:]\n"
            "runpy.run_module('thinjax.evaluate', run_name='__main__')\n")


def _evaluate(root, **env):
    """(result, JAX's compile lines, imported heavy modules) of one evaluation process, with
    JAX logging each compile and each persistent-cache hit and miss."""
    r = subprocess.run([sys.executable, "-c", EVALUATE, f"--checkpoint={ASSET}",
                        "--data=sample:cifar10", "--json"], capture_output=True, text=True,
                       cwd=ROOT, timeout=600, env={
                           **os.environ, "THINJAX_CACHE": str(root), "THINJAX_CONV": "xla",
                           "JAX_LOG_COMPILES": "1", "JAX_EXPLAIN_CACHE_MISSES": "1",
                           # every program cached, however quickly this machine compiles it
                           "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0", **env})
    assert r.returncode == 0, r.stderr[-2000:]
    lines = r.stderr.splitlines()
    imported = json.loads(next(ln for ln in lines if ln.startswith("imported "))[9:])
    return json.loads(r.stdout.strip().splitlines()[-1]), lines, imported


def _count(lines, text):
    return sum(text in ln for ln in lines)


def _entries(root, monkeypatch):
    monkeypatch.setenv("THINJAX_CACHE", str(root))
    d = cache.compilation_dir(cpu.machine_id())
    return sorted(os.listdir(d)) if os.path.isdir(d) else []


def test_a_second_run_compiles_nothing_it_reads_the_first_runs_programs(tmp_path, monkeypatch):
    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
    first, log1, imported1 = _evaluate(tmp_path)
    written = _entries(tmp_path, monkeypatch)
    assert any(n.startswith("jit_eval_step-") for n in written), written
    compiles = _count(log1, "Compiling ")
    assert compiles >= 1 and _count(log1, "PERSISTENT COMPILATION CACHE MISS") == compiles
    assert _count(log1, "Not writing persistent cache entry") == 0, log1
    second, log2, imported = _evaluate(tmp_path)
    assert _count(log2, "PERSISTENT COMPILATION CACHE MISS") == 0, log2
    assert _count(log2, "Persistent compilation cache hit for 'jit_eval_step'") == 1
    assert _count(log2, "Persistent compilation cache hit") == _count(log2, "Compiling ")
    assert _entries(tmp_path, monkeypatch) == written  # nothing written anew
    assert second["top1"] == first["top1"] and second["loss"] == first["loss"]
    assert 0 < second["first_batch_cpu_s"] and 0 < second["first_batch_s"]
    assert imported1 == ["tensorflow"]  # for tf.data; not its Keras, nor optax or orbax
    assert imported == []  # the split's inputs were kept (thinjax.split_cache): no tf.data


def test_the_cache_is_off_with_one_setting_and_a_users_own_folder_is_kept(tmp_path):
    code = ("import jax, thinjax.commands as c; print(c.COMPILATION_CACHE, "
            "jax.config.jax_compilation_cache_dir, "
            "jax.config.jax_persistent_cache_min_compile_time_secs)")
    run = lambda **env: subprocess.run(  # noqa: E731
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300,
        env={**env, "THINJAX_CACHE": str(tmp_path)}).stdout.split()
    env = {k: v for k, v in os.environ.items()
           if k not in ("JAX_COMPILATION_CACHE_DIR", "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS")}
    assert run(**env) == [os.path.join(str(tmp_path), "jax-compile", cpu.machine_id())] * 2 \
        + ["0.2"]
    assert run(**env, THINJAX_NO_COMPILATION_CACHE="1")[:2] == ["None", "None"]
    mine = str(tmp_path / "mine")
    assert run(**env, JAX_COMPILATION_CACHE_DIR=mine)[:2] == [mine, mine]
    assert run(**env, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")[2] == "0.0"


def test_tensorflow_is_imported_without_keras_and_keras_stays_importable():
    code = ("import sys; from thinjax.commands import import_tensorflow as i; tf = i(); "
            "print('keras' in sys.modules, i() is tf, "
            "sum(tf.data.Dataset.range(3).as_numpy_iterator())); "
            "import keras.src.optimizers; print('keras' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split() == ["False", "True", "3", "True"]
