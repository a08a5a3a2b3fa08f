"""Helpers the test files share (no test file imports another): training subprocesses,
small plans and masks, a tiny protocol config."""

import os
import re
import shutil
import subprocess
import sys
import time

import jax
import ml_collections
import numpy as np

from thinjax.checkpoint import load_model
from thinjax.plan import BlockPlan, Plan, StagePlan
from thinjax.prune.groups import channel_groups

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Where thinjax's oneDNN kernels should build (the CI machine is one): a failed build there
# is a failure.
BUILDABLE = (sys.platform.startswith("linux") and os.uname().machine == "x86_64"
             and shutil.which(os.environ.get("CXX", "g++")) is not None)


TINY = [  # ThinResNet-20 w=4 on the sample, a few steps with the full recipe's features
    "--config=configs/default.py", "--config.model.width=4", "--config.train.batch_size=32",
    "--config.train.total_steps=12", "--config.train.checkpoint_every=4",
    "--config.train.log_every=4", "--config.train.eval_every_epochs=1000",
    "--config.data.trivial_augment=True", "--config.data.random_erasing=0.25",
    "--config.train.mixup_alpha=0.2", "--config.train.cutmix_alpha=1.0",
    "--config.ema.every=2", "--config.optim.warmup_epochs=0.05",
    "--config.data.eval_batch_size=500", "--config.train.async_checkpoints=False",
]


def main_cmd(workdir, *extra):
    return [sys.executable, "-m", "thinjax.main", f"--workdir={workdir}", *TINY, *extra]


def sub_env(devices: int = 1) -> dict:
    """The environment of a training subprocess: `devices` CPU devices, and XLA's backend
    optimisation off (-O0): these runs are a few steps long, so compiling the train step
    dominates; the results agree with optimised code's to float tolerance."""
    env = dict(os.environ)
    env["XLA_FLAGS"] = (f"--xla_force_host_platform_device_count={devices} "
                        "--xla_backend_optimization_level=0")
    return env


def run(workdir, *extra, devices=1, check=True):
    env = sub_env(devices)
    r = subprocess.run(main_cmd(workdir, *extra, "--json"), capture_output=True, text=True,
                       cwd=ROOT, env=env, timeout=600)
    (workdir / "log.txt").write_text(r.stdout + r.stderr) if workdir.exists() else None
    if check:
        assert r.returncode == 0, r.stderr[-3000:]
    return r


def final_params(workdir):
    plan, v, meta = load_model(str(workdir))
    return v, meta


def assert_trees_close(a, b, rtol, atol):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(la) == len(lb)
    for x, y in zip(la, lb):
        np.testing.assert_allclose(x, y, rtol=rtol, atol=atol)


def wait_for_checkpoint(workdir, proc, minimum_step):
    ck = workdir / "checkpoints"
    deadline = time.time() + 300
    while time.time() < deadline:
        steps = [int(d) for d in (os.listdir(ck) if ck.exists() else []) if d.isdigit()]
        if steps and max(steps) >= minimum_step:
            return max(steps)
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        time.sleep(0.2)
    raise AssertionError("no checkpoint appeared")


def n_params(tree) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def irregular_plan() -> Plan:
    return Plan("basic", "cifar", 7, (
        StagePlan(9, 1, (BlockPlan((3,), True), BlockPlan((0,)), BlockPlan((12,)))),
        StagePlan(13, 2, (BlockPlan((5,), True), BlockPlan((1,)))),
        StagePlan(6, 2, (BlockPlan((17,), True), BlockPlan((0,)), BlockPlan((2,)))),
    ), num_classes=5)


def random_masks(plan, rng, p_keep=0.6, p_drop_block=0.15):
    masks = {}
    for n, g in channel_groups(plan).items():
        m = (rng.random(g.size) < p_keep).astype(np.float32)
        if g.removable and rng.random() < p_drop_block:
            m[:] = 0
        elif not m.any():
            m[rng.integers(g.size)] = 1
        masks[n] = m
    return masks


def tiny(tmp_path):
    c = ml_collections.ConfigDict()
    c.title = "tiny protocol"
    c.data = ml_collections.ConfigDict({"name": "sample:cifar10", "data_dir": "",
                                        "split": "test", "eval_batch_size": 250})
    c.protocol = ml_collections.ConfigDict({
        "arch": "resnet20", "base_width": 4, "targets": (2,), "seeds": 3, "delta": 5.0,
        "dense_epochs": 0.25, "finetune_epochs": (0.25,), "ref_epochs": 0.25,
        "criteria": ("l1",), "curve_criteria": 0, "curve_targets": (), "control_targets": (),
        "arms": ("dense", "oneshot", "thin", "pruned+ft"),
        "lr_grid": {"thin": (0.05, 0.2), "pruned+ft": (0.05,)}, "dense_lr": 0.1,
        "recalibrate_bn": 3, "train_split": "train[:2000]", "val_split": "train[2000:]",
        "recipe": os.path.join(ROOT, "configs", "quick_cifar10.py"), "batch_size": 64,
        "recipe_overrides": ("--config.train.log_every=10",)})
    return c


CHECK_LINE = r"(check: max \|pruned - masked\| on the example input = )(\S+)"


def assert_report_as_shown(report: str, shown: str) -> None:
    """A pruning report equals the one the docs show, but for its check figure: float32
    rounding, 0 where the smaller network's convolutions round as the masked one's do (the
    AVX-512 EPYC) and ~1e-7 where they take other kernels (2.4e-07, 1.0e-07 on an AVX2
    EPYC); it must stay under the tolerance `thinjax.trace` itself refuses above."""
    assert re.sub(CHECK_LINE, r"\1X", report) == re.sub(CHECK_LINE, r"\1X", shown.strip())
    assert float(re.search(CHECK_LINE, report).group(2)) <= 1e-4
