"""The core install: models, plans, cost, pruning, the zoo and checkpoints need neither
PyTorch nor TensorFlow (nor matplotlib, TensorBoard, PIL, onnx); a missing extra is named.

The child processes block those packages as if they were not installed (a meta-path finder
raising ModuleNotFoundError, what a missing package raises)."""

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import RELEASE
from tests.helpers import ROOT
from thinjax.cost import count
from thinjax.plan import plan_from_width

EXTRAS = ("tensorflow", "tensorflow_datasets", "torch", "matplotlib", "tensorboard", "PIL",
          "onnx", "onnxruntime", "wandb")
BLOCKER = f"""
import importlib.abc, sys
class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in {EXTRAS!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
sys.meta_path.insert(0, Blocker())
"""


def _child(code: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCKER + code], capture_output=True,
                          text=True, cwd=ROOT, env={**os.environ, **env}, timeout=600)


@pytest.mark.skipif(not os.path.isdir(RELEASE), reason="needs ../shared's release files")
def test_a_release_network_loads_and_prunes_to_half_its_macs_without_torch_or_tf(tmp_path):
    r = _child("""
import json, sys
import numpy as np
import thinjax
net = thinjax.create_model("resnet20", width=8, pretrained=True)
small = thinjax.prune_model(net, target=0.5)
x = np.zeros((2, 32, 32, 3), np.float32)
print(json.dumps({"macs": [net.cost().macs, small.cost().macs],
                  "params": [net.cost().params, small.cost().params],
                  "logits": list(np.asarray(small(x)).shape),
                  "loaded": sorted(m for m in sys.modules if m.split(".")[0] in EXTRAS)}))
""".replace("EXTRAS", repr(EXTRAS)), THINJAX_ZOO_DIR=RELEASE, THINJAX_CACHE=str(tmp_path))
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["loaded"] == []
    full, half = out["macs"]
    assert full == count(plan_from_width("resnet20", 8)).macs  # the release's ResNet-20 w=8
    assert 0.49 * full <= half <= 0.505 * full  # the allocator's +-1% of the target
    assert out["params"][1] < out["params"][0] and out["logits"] == [2, 10]


def test_a_part_whose_extra_is_missing_names_the_extra():
    r = _child("import thinjax.data")
    assert r.returncode == 1
    assert ("thinjax.data (training and evaluation input) needs tensorflow, which is not "
            "installed: pip install 'thinjax[train]'") in r.stderr
    r = _child("import thinjax.plots; thinjax.plots.plot([], [], 'x', 'macs', 't', 'l')")
    assert "plotting needs matplotlib, which is not installed: pip install 'thinjax[plot]'" \
        in r.stderr


def test_the_training_command_without_its_extra_is_one_error_line(tmp_path):
    r = _child("import runpy, sys; sys.argv = ['thinjax.main', '--config=configs/default.py', "
               f"'--workdir={tmp_path / 'wd'}']; runpy.run_module('thinjax.main', "
               "run_name='__main__')")
    assert r.returncode == 2, r.stderr[-2000:]
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert lines == ["error: thinjax.data (training and evaluation input) needs tensorflow, "
                     "which is not installed: pip install 'thinjax[train]' (or "
                     "'thinjax[all]')"], r.stderr
