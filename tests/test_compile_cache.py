"""The commands' persistent compilation cache (thinjax.commands.compilation_cache): the first
run of a command fills jax-compile/<machine>/ in the thinjax cache, a second run of the same
command compiles nothing new (it reads what the first wrote), and one setting turns it off."""

import json
import os
import subprocess
import sys

from tests.helpers import ROOT
from thinjax import cache, cpu

ASSET = os.path.join(ROOT, "thinjax", "assets", "resnet20_width4_cifar10_ema.safetensors")


def _evaluate(root, **env):
    r = subprocess.run([sys.executable, "-m", "thinjax.evaluate", f"--checkpoint={ASSET}",
                        "--data=sample:cifar10", "--json"], capture_output=True, text=True,
                       cwd=ROOT, timeout=600, env={**os.environ, "THINJAX_CACHE": str(root),
                                                   "THINJAX_CONV": "xla", **env})
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def _entries(root, monkeypatch):
    monkeypatch.setenv("THINJAX_CACHE", str(root))
    d = cache.compilation_dir(cpu.machine_id())
    return sorted(os.listdir(d)) if os.path.isdir(d) else []


def test_a_second_run_reads_the_first_runs_compiled_programs(tmp_path, monkeypatch):
    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
    first = _evaluate(tmp_path)
    written = _entries(tmp_path, monkeypatch)
    assert any(n.startswith("jit_eval_step-") for n in written), written
    second = _evaluate(tmp_path)
    assert _entries(tmp_path, monkeypatch) == written  # nothing compiled anew
    assert second["top1"] == first["top1"] and second["loss"] == first["loss"]
    assert first["first_batch_s"] > 0 and second["first_batch_s"] > 0


def test_the_cache_is_off_with_one_setting_and_a_users_own_folder_is_kept(tmp_path):
    code = ("import jax, thinjax.commands as c; "
            "print(c.COMPILATION_CACHE, jax.config.jax_compilation_cache_dir)")
    run = lambda **env: subprocess.run(  # noqa: E731
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300,
        env={**os.environ, "THINJAX_CACHE": str(tmp_path), **env}).stdout.split()
    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    on = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                        cwd=ROOT, timeout=300, env={**env, "THINJAX_CACHE": str(tmp_path)})
    assert on.stdout.split() == [os.path.join(str(tmp_path), "jax-compile",
                                              cpu.machine_id())] * 2
    assert run(THINJAX_NO_COMPILATION_CACHE="1") == ["None", "None"]
    mine = str(tmp_path / "mine")
    assert run(JAX_COMPILATION_CACHE_DIR=mine) == [mine, mine]
