"""Example networks (thinjax.models.examples) through the commands: trained by
``python -m thinjax.main`` with ``config.model.example``, resumed, evaluated, and their
checkpoints rebuilt from the metadata alone (thinjax.trace.example).

The training runs are subprocesses (XLA -O0, as tests/test_train.py's) on the bundled
CIFAR-10 sample: MobileNetV2 at width 0.25 (250,922 params, 9.48 M MACs at 32x32), a few
steps at batch 16."""

import json
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from tests.helpers import ROOT, sub_env
from thinjax.checkpoint import load_model, load_network
from thinjax.errors import CheckpointError, ConfigError
from thinjax.evaluation import evaluate_checkpoint
from thinjax.prune.spec import PruneSpec
from thinjax.trace.example import ExampleNet, example_net, network_from_meta, network_meta
from thinjax.trace.networks import network

MNV2 = ["--config=configs/quick_mobilenetv2.py", "--config.data.name=sample:cifar10",
        "--config.model.width_mult=0.25", "--config.train.batch_size=16",
        "--config.train.total_steps=6", "--config.train.checkpoint_every=2",
        "--config.train.log_every=2", "--config.train.eval_every_epochs=1000",
        "--config.data.eval_batch_size=50", "--config.data.eval_split=test[:50]",
        "--config.train.async_checkpoints=False", "--config.ema.decay=0.9",
        "--config.optim.warmup_epochs=0.02"]


def main(workdir, *args, check=True):
    r = subprocess.run([sys.executable, "-m", "thinjax.main", f"--workdir={workdir}", *args],
                       capture_output=True, text=True, cwd=ROOT, env=sub_env(), timeout=900)
    if check:
        assert r.returncode == 0, r.stderr[-3000:]
    return r


def leaves_equal(a, b) -> bool:
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    return len(la) == len(lb) and all(np.array_equal(x, y) for x, y in zip(la, lb))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A MobileNetV2 run of 6 steps (checkpoints at 2, 4 and 6; EMA on)."""
    wd = tmp_path_factory.mktemp("mnv2") / "run"
    main(wd, *MNV2)
    return wd


def test_example_networks_are_described_by_name_and_arguments():
    net = example_net("mobilenetv2", 32, width=0.5, num_classes=7)
    meta = network_meta(net)
    assert meta["example"]["name"] == "mobilenetv2" and meta["example"]["shapes"] == {}
    assert meta["example"]["args"]["width"] == 0.5 and meta["example"]["args"]["strides"] \
        == [1, 1, 2, 2, 1, 2, 1]              # every argument, defaults included
    assert network_from_meta(json.loads(json.dumps(meta))) == net
    assert ExampleNet.from_dict(meta["example"]).module().num_classes == 7
    for bad, match in [(dict(name="mobilenet"), "config.model.example='mobilenet': unknown "
                        "example network; use one of convnext, mobilenetv2, vit"),
                       (dict(name="vit", width=0.0), "config.model.width_mult=0.0: the width "
                        "multiplier of vit must be a number > 0"),
                       (dict(name="convnext", width=float("nan")), "width_mult=nan"),
                       (dict(name="vit", depht=2), "vit: no argument 'depht'")]:
        name = bad.pop("name")
        with pytest.raises(ConfigError, match=match):
            example_net(name, **bad)


def test_an_unknown_example_is_one_error_line(tmp_path):
    r = main(tmp_path / "w", *MNV2, "--config.model.example=resnet", check=False)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, r.stderr[-2000:]
    assert lines[0].startswith("error: config.model.example='resnet': unknown example")
    assert not (tmp_path / "w").exists()       # a start that fails leaves nothing behind


def test_mobilenetv2_trains_resumes_bit_for_bit_and_evaluates(trained, tmp_path):
    """The checkpoints record the network; resuming from step 2 (the later ones deleted)
    ends where the uninterrupted run ended, bit for bit; evaluate reads the workdir."""
    res = json.loads((trained / "results.json").read_text())
    net = example_net("mobilenetv2", 32, width=0.25, num_classes=10)
    assert res["example"] == net.to_dict() and res["steps"] == 6
    assert (res["params"], res["macs"]) == (250_922, 9_481_216)
    desc, final, meta = load_network(str(trained / "checkpoints" / "6"))
    assert desc == net and meta["example"] == net.to_dict() and meta["has_ema"]
    with pytest.raises(CheckpointError, match="holds an example network"):
        load_model(str(trained))             # the ThinResNet-only loader says why not
    wd = tmp_path / "resumed"
    shutil.copytree(trained, wd)
    for step in ("4", "6"):
        shutil.rmtree(wd / "checkpoints" / step)
    (wd / "results.json").unlink()
    r = main(wd, *MNV2)
    assert f"resumed from {wd / 'checkpoints'} step 2" in r.stdout
    assert leaves_equal(load_network(str(wd / "checkpoints" / "6"))[1], final)
    ev = evaluate_checkpoint(str(trained), "sample:cifar10", "test[:50]", 50, progress=False)
    assert ev["top1"] == res["eval_top1"] and ev["params"] == 250_922
    assert ev["plan"] == "mobilenetv2 (num_classes=10, width=0.25)"


def prune_cmd(*args, check=True):
    r = subprocess.run([sys.executable, "-m", "thinjax.convert", *args], capture_output=True,
                       text=True, cwd=ROOT, env=sub_env(), timeout=900)
    if check:
        assert r.returncode == 0, r.stderr[-3000:]
    return r


PRUNE = PruneSpec(criterion="l1", target_kind="macs_fraction", target=0.5, round_to=2)


@pytest.fixture(scope="module")
def pruned(trained, tmp_path_factory):
    """The prune command's output for `trained` (EMA weights), L1 global to half the MACs,
    channel counts even."""
    out = tmp_path_factory.mktemp("pruned") / "out"
    prune_cmd(f"--checkpoint={trained}", f"--output={out}", *PRUNE.to_command_flags())
    return out


def test_the_prune_command_materialises_what_the_masked_network_computes(trained, pruned):
    desc, v, _ = load_network(str(trained), use_ema=True)
    net = network(desc)
    alloc = net.compute_masks(v, PRUNE, PRUNE.goal())      # what the command decided
    small, (small_desc, small_vars, meta) = net.small(alloc.masks), load_network(
        str(pruned / "model"))
    assert small_desc == small.desc and small_desc.pruned
    assert network_from_meta(meta, "dense_") == desc
    assert network_from_meta(json.loads((pruned / "plan.json").read_text())) == small_desc
    kept = [int(np.sum(m)) for m in alloc.masks.values()]
    sizes = [g.size for g in net.groups.values()]
    assert all(k % 2 == 0 or k == n for k, n in zip(kept, sizes)) and sum(kept) < sum(sizes)
    s = json.loads((pruned / "summary.json").read_text())
    assert (s["before"]["params"], s["before"]["macs"]) == (250_922, 9_481_216)
    assert abs(s["after"]["macs"] / s["before"]["macs"] - 0.5) <= 0.01
    assert (s["after"]["params"], s["after"]["macs"]) == (small.cost().params,
                                                          small.cost().macs)
    x = np.random.default_rng(0).standard_normal((4, 32, 32, 3)).astype(np.float32)
    masked = {k: net.mask_tree(t, alloc.masks) for k, t in v.items()}
    y_masked = jax.jit(net.model.apply)(masked, x)
    y_small = jax.jit(small.model.apply)(small_vars, x)
    # float32 sums in another order (measured: up to 3e-7 of the logits' size)
    np.testing.assert_allclose(y_small, y_masked, rtol=0,
                               atol=1e-5 * float(np.abs(y_masked).max()))
    assert not np.allclose(y_masked, jax.jit(net.model.apply)(v, x), atol=1e-3)


def test_the_pruned_example_fine_tunes_and_evaluates_from_its_folder(pruned, tmp_path):
    """The prune command's config.py fine-tunes the smaller network (its plan.json holds
    the example's description, its model/ the weights, loaded as init_from)."""
    small_desc, small_vars, _ = load_network(str(pruned / "model"))
    wd = tmp_path / "ft"
    main(wd, f"--config={pruned}/config.py", "--config.data.name=sample:cifar10",
         "--config.train.total_steps=2", "--config.train.batch_size=16",
         "--config.data.eval_split=test[:50]", "--config.data.eval_batch_size=50",
         "--config.train.checkpoint_every=1", "--config.ema.enabled=False")
    res = json.loads((wd / "results.json").read_text())
    assert res["example"] == small_desc.to_dict() and res["steps"] == 2
    assert res["params"] == network(small_desc).cost().params < 250_922 / 2 + 10_000
    desc, tuned, meta = load_network(str(wd / "checkpoints" / "1"))
    assert desc == small_desc and meta["config"]["init_from"] == str(pruned / "model")
    # one step from the pruned weights: every leaf the same shape, the kernels moved
    assert jax.tree.map(np.shape, tuned) == jax.tree.map(np.shape, small_vars)
    assert not np.array_equal(tuned["params"]["head"]["kernel"],
                              small_vars["params"]["head"]["kernel"])


GRADUAL = ["--config=configs/quick_mobilenetv2.py", "--config.data.name=sample:cifar10",
           "--config.model.example=convnext", "--config.model.width_mult=0.125",
           "--config.train.batch_size=16", "--config.train.total_steps=8",
           "--config.train.checkpoint_every=2", "--config.train.log_every=2",
           "--config.train.eval_every_epochs=1000", "--config.data.eval_batch_size=50",
           "--config.data.eval_split=test[:50]", "--config.train.async_checkpoints=False",
           "--config.ema.enabled=False", "--config.optim.warmup_epochs=0.02",
           # 156 steps an epoch: events at steps 2 and 4, then the smaller network
           "--config.prune.schedule=gradual", "--config.prune.end_epoch=0.0257",
           "--config.prune.every_epochs=0.0129", "--config.prune.target_kind=macs_fraction",
           "--config.prune.target=0.5"]


def test_a_gradual_schedule_on_traced_groups_ends_materialised_at_its_target(tmp_path):
    """ConvNeXt (width 0.125: no BatchNorm; its LayerNorm streams stay whole, its four MLP
    groups are pruned) under a gradual schedule: two events on the traced groups, then
    the smaller network, whose MACs (counted on its own trace) are the target; resumed
    from a checkpoint of the smaller network, it ends where the uninterrupted run ends."""
    wd = tmp_path / "run"
    out = main(wd, *GRADUAL).stdout
    res = json.loads((wd / "results.json").read_text())
    dense = example_net("convnext", 32, width=0.125, num_classes=10)
    assert [e["step"] for e in res["prune_events"]] == [2, 4] and "materialised" in out
    assert res["dense_macs"] == 2_037_312 and res["prune_events"][1]["macs"] == res["macs"]
    assert abs(res["macs"] / res["dense_macs"] - 0.5) <= 0.01
    small, final, meta = load_network(str(wd / "checkpoints" / "8"))
    assert meta["materialized"] and network_from_meta(meta, "dense_") == dense
    assert small.pruned and res["example"] == small.to_dict()
    assert network(small).cost().macs == res["macs"]
    assert "masks" in load_network(str(wd / "checkpoints" / "4"))[2]   # before event 2
    shutil.rmtree(wd / "checkpoints" / "8")
    (wd / "results.json").unlink()
    assert f"resumed from {wd / 'checkpoints'} step 6" in main(wd, *GRADUAL).stdout
    assert leaves_equal(load_network(str(wd / "checkpoints" / "8"))[1], final)
