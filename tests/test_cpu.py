"""thinjax.cpu and the process edge: importing thinjax changes nothing in the process; the
commands tune it (malloc settings, oneDNN's convolutions); the CPU's description."""

import json
import os
import subprocess
import sys

import pytest

from tests.helpers import BUILDABLE
from thinjax import cpu

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Importing jax sets TF_CPP_MIN_LOG_LEVEL and TPU_SKIP_MDS_QUERY, TensorFlow sets
# TF2_BEHAVIOR, TPU_ML_PLATFORM and others (their doing, not thinjax's): the snapshot is
# taken after they are imported; then thinjax, its models, pruning, data and training
IMPORTS = """
import json, os, sys, jax, tensorflow, tensorflow_datasets
before = dict(os.environ)
import thinjax, thinjax.models, thinjax.prune, thinjax.train.loop, thinjax.data.pipeline
from thinjax import allocator
from thinjax.ops import conv
changed = sorted(k for k in set(before) | set(os.environ) if before.get(k) != os.environ.get(k))
print(json.dumps({"changed": changed, "malloc": allocator.malloc_status(),
                  "auto": conv.resolve("auto"),
                  "edge": "thinjax.commands" in sys.modules}))
"""


def _env() -> dict:
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    for k in ("THINJAX_NO_MALLOC_TUNING", "THINJAX_CONV", "TF_CPP_MIN_LOG_LEVEL"):
        env.pop(k, None)
    return env


def test_importing_thinjax_changes_no_environment_variable_and_no_malloc_setting():
    r = subprocess.run([sys.executable, "-c", IMPORTS], env=_env(), capture_output=True,
                       text=True, timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out == {"changed": [], "malloc": "not applied", "auto": "xla", "edge": False}


@pytest.mark.skipif(not BUILDABLE, reason="oneDNN kernels build on Linux x86-64 with g++ only")
def test_a_command_on_the_cpu_gets_onednn_and_the_malloc_settings(tmp_path):
    wd = tmp_path / "run"
    r = subprocess.run([sys.executable, "-m", "thinjax.main", "--config=configs/default.py",
                        f"--workdir={wd}", "--config.train.total_steps=1"], env=_env(),
                       capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.load(open(wd / "results.json"))
    assert res["convolution"] == "onednn" and res["malloc"] == "applied", res


def test_enable_makes_auto_prefer_onednn_and_reports_malloc(monkeypatch):
    from thinjax import allocator
    from thinjax.ops import conv
    monkeypatch.setattr(conv, "_PREFER_ONEDNN", [False])
    monkeypatch.setattr(allocator, "_STATUS", ["not applied"])
    assert conv._auto_reason("float32").startswith("thinjax.cpu.enable() was not called")
    got = cpu.enable({"THINJAX_NO_MALLOC_TUNING": "1"})
    assert got["malloc"] == "THINJAX_NO_MALLOC_TUNING is set" and conv._PREFER_ONEDNN == [True]


def test_cpu_description_names_the_cpu():
    d = cpu.cpu_description()
    assert "logical cores" in d and d.split(",")[0].strip()
