"""thinjax.export: pruned and regular networks out to torch, ONNX and TFLite, each checked
in its own runtime against thinjax's logits; refusals, failures, missing packages."""

import json
import os

import numpy as np
import pytest

from tests.conftest import release_path
from thinjax.checkpoint import export_model
from thinjax.commands import cli
from thinjax.commands import export as export_command
from thinjax.interop import export as ex
from thinjax.interop.torch import import_checkpoint
from thinjax.models.resnet import random_variables
from thinjax.plan import BlockPlan, Plan, StagePlan
from thinjax.prune.allocate import Target, allocate
from thinjax.prune.criteria import ScoreInputs, score_groups
from thinjax.prune.materialize import materialize

pytest.importorskip("onnxruntime")
pytest.importorskip("torch")


def _export(args: list[str]) -> int:
    """``python -m thinjax.export ARGS`` in this process; its exit status."""
    return cli.call(export_command.main, args, export_command.FLAGS)


def _l1_pruned(plan, variables, fraction, remove=None, round_to=1):
    """L1 global pruning to `fraction` of the MACs (as thinjax.convert does), optionally
    removing the branch of block `remove` as well."""
    al = allocate(plan, score_groups(ScoreInputs(plan, variables), "l1"),
                  Target("macs_fraction", fraction), method="global", round_to=round_to)
    masks = {k: np.array(m) for k, m in al.masks.items()}
    if remove:
        masks[f"{remove}/conv1"][:] = 0
        if plan.block == "bottleneck":
            masks[f"{remove}/conv2"][:] = 0
    return materialize(plan, masks, variables)


@pytest.fixture(scope="module")
def networks():
    """name -> (plan, variables, input size): a release network, an L1-pruned one with a
    removed block (irregular), and a pruned ImageNet-stem bottleneck network."""
    plan, v = import_checkpoint(release_path("resnet20_width4_cifar10_ema.pt"))
    p_irr, v_irr = _l1_pruned(plan, v, 0.6, remove="stage2/block1")
    bott = Plan("bottleneck", "imagenet", 8, (  # a small ResNet-50-like network
        StagePlan(32, 1, (BlockPlan((8, 8), True), BlockPlan((8, 8)), BlockPlan((8, 8)))),
        StagePlan(64, 2, (BlockPlan((16, 16), True), BlockPlan((16, 16))))), 10)
    p_b, v_b = _l1_pruned(bott, random_variables(bott, 0), 0.7, remove="stage1/block2")
    assert p_irr.stages[1].blocks[1].removed and p_b.stages[0].blocks[2].removed
    assert any(b.inner[0] not in (0, s.width) for s in p_irr.stages for b in s.blocks)
    return {"regular": (plan, v, 32), "irregular": (p_irr, v_irr, 32),
            "bottleneck": (p_b, v_b, 64)}


@pytest.mark.parametrize("fmt", ["torch", "onnx", "tflite"])
@pytest.mark.parametrize("kind", ["regular", "irregular", "bottleneck"])
def test_export_runs_in_its_own_runtime(networks, tmp_path, kind, fmt):
    if fmt == "tflite":
        pytest.importorskip("tensorflow")
    plan, v, size = networks[kind]
    out = tmp_path / f"model.{'pt' if fmt == 'torch' else fmt}"
    s = ex.export(plan, v, fmt, str(out), input_size=size, check_images=4)
    assert s["max_relative_error"] < 1e-4 and os.path.isfile(out)
    # independently: other images, a batch size the check did not use
    x = ex.sample_images(4, size, seed=7)
    got = ex.runner(fmt, str(out))(x)  # torch: the plan from the .plan.json beside it
    want = ex.thinjax_logits(plan, v, x)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * np.abs(want).max())
    assert sorted(os.listdir(tmp_path)) == sorted(os.path.basename(f) for f in s["files"])


def test_torch_export_has_the_release_names_and_values(networks, tmp_path):
    import torch
    plan, v, _ = networks["regular"]
    ex.export(plan, v, "torch", str(tmp_path / "r20.pt"))
    mine = torch.load(tmp_path / "r20.pt", weights_only=True)
    rel = torch.load(release_path("resnet20_width4_cifar10_ema.pt"), map_location="cpu",
                     weights_only=True)
    rel = {k: t for k, t in rel.items() if not k.endswith("num_batches_tracked")}
    assert sorted(mine) == sorted(rel)
    for k in rel:
        np.testing.assert_array_equal(mine[k].numpy(), rel[k].numpy(), err_msg=k)
    p_irr, v_irr, _ = networks["irregular"]
    ex.export(p_irr, v_irr, "torch", str(tmp_path / "irr.pt"))
    assert import_checkpoint(str(tmp_path / "irr.pt"))[0] == p_irr  # thinjax reads it back
    assert not any(k.startswith("layer2.1.") for k in torch.load(tmp_path / "irr.pt"))


def test_onnx_graph_is_inference_only_with_fixed_batch(networks, tmp_path):
    import onnx
    plan, v, size = networks["irregular"]
    ex.export(plan, v, "onnx", str(tmp_path / "m.onnx"), batch_size=2)
    g = onnx.load(str(tmp_path / "m.onnx")).graph
    assert {n.op_type for n in g.node} <= {"Conv", "Relu", "Add", "ReduceMean", "Gemm"}
    dims = [d.dim_value for d in g.input[0].type.tensor_type.shape.dim]
    assert dims == [2, 3, size, size]


def test_command_refuses_existing_and_leaves_nothing_on_failure(networks, tmp_path, capsys):
    plan, v, _ = networks["irregular"]
    ck = str(tmp_path / "pruned")
    export_model(ck, plan, v)
    out = tmp_path / "out" / "m.onnx"
    assert _export([f"--checkpoint={ck}", "--format=onnx", f"--output={out}",
                    "--json"]) == 0
    s = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert s["output"] == str(out) and s["bn_folded"] and s["max_relative_error"] < 1e-4
    assert s["plan"] == plan.describe()
    with pytest.raises(SystemExit) as e:  # exists
        _export([f"--checkpoint={ck}", "--format=onnx", f"--output={out}"])
    assert e.value.code == 2 and "--overwrite" in capsys.readouterr().err
    before = out.read_bytes()
    with pytest.raises(SystemExit) as e:  # the check fails: nothing replaced, no temp left
        _export([f"--checkpoint={ck}", "--format=torch", f"--output={out.parent}/t.pt",
                 "--tolerance=1e-12", "--overwrite"])
    assert e.value.code == 2 and "relative error" in capsys.readouterr().err
    assert sorted(os.listdir(out.parent)) == ["m.onnx", "m.plan.json"]
    assert out.read_bytes() == before


def test_missing_package_names_the_extra(networks, tmp_path, monkeypatch):
    real = ex.importlib.import_module

    def fake(name):
        if name.split(".")[0] == "onnxruntime":
            raise ModuleNotFoundError(f"No module named {name!r}")
        return real(name)
    monkeypatch.setattr(ex.importlib, "import_module", fake)
    plan, v, _ = networks["regular"]
    with pytest.raises(ex.MissingExportDependency, match=r"pip install 'thinjax\[export\]'"):
        ex.export(plan, v, "onnx", str(tmp_path / "m.onnx"))
    assert os.listdir(tmp_path) == []
