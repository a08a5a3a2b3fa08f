"""Pruning inside training runs (schedules, masks in checkpoints, resume) and the
checkpoint-to-pruned conversion command, end to end on the bundled CIFAR-10 sample."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

import thinjax
from tests.helpers import ROOT, run, sub_env
from thinjax import conversion
from thinjax.checkpoint import export_model, load_model
from thinjax.commands import cli
from thinjax.commands import prune as convert
from thinjax.cost import count
from thinjax.plan import plan_from_width
from thinjax.prune.groups import mask_tree
from thinjax.prune.spec import PruneSpec

ASSET = os.path.join(os.path.dirname(thinjax.__file__), "assets",
                     "resnet20_width4_cifar10_ema.safetensors")
@pytest.fixture(scope="module")
def masked_run(tmp_path_factory):
    """A run pruned once at step 4 (taylor, uniform) that keeps its masks (no
    materialisation): the masked checkpoint that thinjax.convert turns into a network."""
    wd = tmp_path_factory.mktemp("masked")
    run(wd, "--config.model.width=8", "--config.prune.schedule=oneshot",
        "--config.prune.start_epoch=0.05", "--config.prune.criterion=taylor",
        "--config.prune.taylor_batches=2", "--config.prune.allocation=uniform",
        "--config.prune.target_kind=ratio", "--config.prune.target=0.5",
        "--config.prune.materialize=False", "--config.train.keep_best=True",
        "--config.train.eval_every_epochs=0.1")
    return wd


def test_masks_live_in_checkpoints_and_pruned_channels_stay_dead(masked_run):
    plan, v, meta = load_model(str(masked_run))
    masks = meta["masks"]
    assert plan == plan_from_width("resnet20", 8)
    assert {int(m.sum()) for n, m in masks.items()} == {4, 8, 16}  # half of 8, 16, 32
    for tree in (v["params"], v["batch_stats"]):  # every pruned entry is exactly zero
        for a, b in zip(jax.tree.leaves(tree), jax.tree.leaves(mask_tree(plan, tree, masks))):
            np.testing.assert_array_equal(a, b)
    # the best model is exported materialised, not as a masked wide network
    best_plan, _, _ = load_model(str(masked_run / "best"))
    assert [s.width for s in best_plan.stages] == [4, 8, 16]


def test_convert_masked_run_then_evaluate_and_finetune_its_config(masked_run, tmp_path):
    out = tmp_path / "pruned"
    r = subprocess.run([sys.executable, "-m", "thinjax.convert", f"--checkpoint={masked_run}",
                        f"--output={out}", "--data=sample:cifar10", "--json"],
                       capture_output=True, text=True, cwd=ROOT, timeout=600, env=sub_env())
    assert r.returncode == 0, r.stderr[-3000:]
    s = json.loads(r.stdout.strip().splitlines()[-1])
    assert "before" in r.stdout and "MACs" in r.stdout and "stage3" in r.stdout
    assert s["after"]["params"] < s["before"]["params"] / 3
    # the masked wide network and the materialised one agree on real images
    assert s["masked_top1"] == pytest.approx(s["after"]["top1"], abs=1e-9)
    assert sorted(os.listdir(out)) == [".thinjax-output", "config.py", "finetune.json", "model",
                                       "plan.json", "summary.json"]
    # the config holds no values: every output's is the same; the settings are data
    assert open(out / "config.py").read() == conversion.CONFIG_PY
    recorded = json.load(open(out / "finetune.json"))
    assert recorded["overrides"]["data.name"] == "sample:cifar10" and recorded["source"]
    ev = subprocess.run([sys.executable, "-m", "thinjax.main", f"--config={out}/config.py",
                         f"--workdir={tmp_path / 'ev'}", "--config.mode=evaluate", "--json"],
                        capture_output=True, text=True, cwd=ROOT, timeout=600, env=sub_env())
    assert ev.returncode == 0, ev.stderr[-3000:]
    res = json.loads(ev.stdout.strip().splitlines()[-1])
    assert res["eval"]["top1"] == pytest.approx(s["after"]["top1"], abs=1e-9)
    ft = subprocess.run([sys.executable, "-m", "thinjax.main", f"--config={out}/config.py",
                         f"--workdir={tmp_path / 'ft'}", "--config.train.total_steps=3",
                         "--config.train.batch_size=32", "--json"],
                        capture_output=True, text=True, cwd=ROOT, timeout=600, env=sub_env())
    assert ft.returncode == 0, ft.stderr[-3000:]
    assert json.loads(ft.stdout.strip().splitlines()[-1])["params"] == s["after"]["params"]


def test_convert_prunes_an_imported_release_checkpoint(tmp_path):
    out = tmp_path / "r20"
    spec = PruneSpec(criterion="l1", target_kind="macs_fraction", target=0.5)
    s = convert.convert(ASSET, str(out), spec=spec, data="sample:cifar10")
    assert abs(s["after"]["macs"] / s["before"]["macs"] - 0.5) < 0.01
    assert s["before"]["top1"] > 60 and 10 <= s["after"]["top1"] <= s["before"]["top1"]
    plan, v, meta = load_model(str(out))
    assert count(plan).macs == s["after"]["macs"] and "l1 global" in meta["pruning"]


def _main_exit(args):
    with pytest.raises(SystemExit) as e:
        cli.call(convert.main, args, convert.FLAGS)
    return e.value.code


def test_convert_bad_inputs(tmp_path, capsys):
    out = tmp_path / "o"
    os.makedirs(out)
    assert _main_exit([f"--checkpoint={ASSET}", f"--output={out}", "--target_kind=ratio",
                       "--target=0.5"]) == 2
    assert "exists; choose another --output or pass --overwrite" in capsys.readouterr().err
    new = tmp_path / "n"
    assert _main_exit([f"--checkpoint={ASSET}", f"--output={new}", "--target_kind=macs",
                       "--target=1000"]) == 2
    assert "unreachable" in capsys.readouterr().err
    assert not new.exists() and os.listdir(tmp_path) == ["o"]  # nothing half-written
    assert _main_exit([f"--checkpoint={ASSET}", f"--output={new}"]) == 2
    assert "has no pruning masks" in capsys.readouterr().err
    # a checkpoint whose tree disagrees with its plan: the first bad parameter is named
    plan, v, _ = load_model(ASSET)
    v["params"]["stage2"]["block1"]["conv1"]["kernel"] = np.zeros((3, 3, 8, 5), np.float32)
    export_model(str(tmp_path / "bad"), plan, v)
    assert _main_exit([f"--checkpoint={tmp_path / 'bad'}", f"--output={new}",
                       "--target_kind=ratio", "--target=0.5"]) == 2
    err = capsys.readouterr().err
    assert "params/stage2/block1/conv1/kernel has shape (3, 3, 8, 5)" in err
