"""The training-time pruning methods inside the training loop: soft filter pruning events,
the pruning regularisers in the train step, HRank fed batches by the pruning controller.

One subprocess (XLA -O0, as tests/test_train.py's runs) assembles small runs on the bundled
CIFAR-10 sample with `thinjax.train.loop.assemble` and drives them step by step the way
`train_and_evaluate` does, printing what the tests check as one JSON line."""

import json
import os
import subprocess
import sys
import types

import numpy as np
import pytest

from tests.helpers import sub_env
from thinjax import settings
from thinjax.config import base_config
from thinjax.cost import count
from thinjax.plan import plan_from_width
from thinjax.prune.spec import from_config
from thinjax.train.pruning import PruningController

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

DRIVER = r'''
import json, sys
import jax, numpy as np
from thinjax.config import short_cpu_recipe
from thinjax.commands.train import model_from_config, plan_from_config
from thinjax.prune.groups import channel_groups, flatten, unflatten
from thinjax.prune import regularize
from thinjax import sharding
from thinjax.train.loop import _train_stream, assemble

out = {}

def cfg_for(**prune):
    c = short_cpu_recipe("sample:cifar10", epochs=1)
    c.model.width, c.train.batch_size, c.train.total_steps = 4, 32, 8
    c.train.async_checkpoints, c.ema.enabled = False, False
    c.optim.warmup_epochs = 0.0
    for k, v in prune.items():
        c.prune[k] = v
    return c

def assembled(cfg, workdir, shifts=False):
    plan = plan_from_config(cfg)
    model = model_from_config(cfg, plan)
    init = None
    if shifts:  # BN shifts of 0.1: a fresh BN's 0 passes no gradient through the ReLU
        v = model.init(jax.random.PRNGKey(1), np.zeros((1, 32, 32, 3), np.float32))
        flat = flatten(v["params"])
        flat = {k: x + 0.1 if k.endswith("bias") and "/bn" in k else x for k, x in flat.items()}
        init = {"params": unflatten(flat), "batch_stats": v["batch_stats"]}
    p = assemble(cfg, workdir, model, plan, init)
    return p, model, _train_stream(p.setting, p.source, 0)

def steps(p, model, batches, n, events=True):
    for _ in range(n):
        step = int(jax.device_get(p.state.step))
        if events and p.pruner.due(step):
            p.state, p.run = p.pruner.run_events(p.state, p.run, step, model)
        p.state, _ = p.run.step(p.state, sharding.global_batch(next(batches), p.setting.mesh))

def filter_norms(p):
    flat = flatten(jax.device_get(p.state.params))
    return {k: np.abs(np.asarray(flat[k])).sum((0, 1, 2)).tolist()
            for g in channel_groups(p.run.plan).values() for k in g.kernels}

wd = sys.argv[1]
spe = 2500 // 32   # the sample's 2,500 training images
# soft filter pruning: a soft event at step 0, the hard one at 2
p, model, b = assembled(cfg_for(schedule="soft", criterion="l2", target_kind="macs_fraction",
                                target=0.5, start_epoch=0.0, end_epoch=2 / spe,
                                every_epochs=2 / spe), wd + "/sfp", shifts=True)
out["sfp_before"] = filter_norms(p)
p.state, p.run = p.pruner.run_events(p.state, p.run, 0, model)
out["sfp_after_event"] = filter_norms(p)
out["sfp_masks_after_event"] = {k: np.asarray(v).tolist()
                                for k, v in jax.device_get(p.state.masks).items()}
steps(p, model, b, 2, events=False)
out["sfp_after_2_steps"] = filter_norms(p)
steps(p, model, b, 1)
out["sfp_log"] = p.pruner.log
out["sfp_final_plan"] = p.run.plan.to_dict()
out["sfp_final_masks"] = len(p.state.masks)
out["sfp_dense_plan"] = p.pruner.dense_plan.to_dict()
out["sfp_meta"] = p.pruner.meta(p.run.plan).get("materialized", False)

# GReg, and the same run without it: same seed, same data, 4 steps
prune = dict(schedule="oneshot", start_epoch=4 / spe, criterion="l1",
             target_kind="macs_fraction", target=0.5, greg_step=1.0, greg_every=1,
             greg_ceiling=8.0)
for name, reg in (("greg", "greg"), ("plain", "none")):
    p, model, b = assembled(cfg_for(regularizer=reg, **prune), wd + "/" + name)
    r = p.setting.step_cfg.prune_reg
    out[name + "_has_reg"] = r is not None
    if r is not None:
        out["greg_selected"] = {k: np.asarray(v).tolist() for k, v in r.masks.items()}
    out[name + "_before"] = {k: np.asarray(v).tolist() for k, v in
                             regularize.channel_sq_norms(p.state.params, p.run.plan).items()}
    steps(p, model, b, 4)
    out[name + "_after"] = {k: np.asarray(v).tolist() for k, v in
                            regularize.channel_sq_norms(p.state.params, p.run.plan).items()}
    if name == "greg":  # the event at step 4 materialises; the step runs without it
        steps(p, model, b, 1)
        out["greg_final_plan"] = p.run.plan.to_dict()
        out["greg_loss_finite"] = bool(np.isfinite(float(jax.device_get(
            p.run.step(p.state, sharding.global_batch(next(b), p.setting.mesh))[1]["loss"]))))

# HRank in the loop: the controller feeds it training batches
p, model, b = assembled(cfg_for(schedule="oneshot", criterion="hrank", taylor_batches=2,
                                allocation="uniform", target_kind="macs_fraction",
                                target=0.5), wd + "/hrank")
p.state, p.run = p.pruner.run_events(p.state, p.run, 0, model)
out["hrank_log"] = p.pruner.log
out["hrank_plan"] = p.run.plan.to_dict()
print("RESULT " + json.dumps(out))
'''


@pytest.fixture(scope="module")
def driven(tmp_path_factory):
    wd = tmp_path_factory.mktemp("prune_training")
    r = subprocess.run([sys.executable, "-c", DRIVER, str(wd)], capture_output=True,
                       text=True, cwd=ROOT, env=sub_env(), timeout=600)
    assert r.returncode == 0, r.stderr[-4000:]
    line = [x for x in r.stdout.splitlines() if x.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


def test_soft_event_zeroes_filters_that_grow_back_and_the_last_event_materialises(driven):
    before, after, later = (driven[k] for k in ("sfp_before", "sfp_after_event",
                                                "sfp_after_2_steps"))
    zeroed = {k: [i for i, v in enumerate(after[k]) if v == 0.0] for k in after}
    assert sum(map(len, zeroed.values())) > 0
    # nothing was zero before; the soft event keeps no mask (every entry still 1)
    assert all(v > 0 for k in before for v in before[k])
    assert all(all(m == 1.0 for m in v) for v in driven["sfp_masks_after_event"].values())
    # kept filters untouched by the event; zeroed filters nonzero again after 2 steps
    for k in after:
        kept = [i for i in range(len(after[k])) if i not in zeroed[k]]
        np.testing.assert_allclose([after[k][i] for i in kept], [before[k][i] for i in kept])
        assert all(later[k][i] > 0 for i in zeroed[k]), k
    log = driven["sfp_log"]
    assert [(e["step"], e["soft"]) for e in log] == [(0, True), (2, False)]
    assert driven["sfp_meta"] is True and driven["sfp_final_masks"] == 0
    final, dense = driven["sfp_final_plan"], driven["sfp_dense_plan"]
    assert final != dense and final["stem_width"] <= dense["stem_width"]


def test_greg_shrinks_the_selected_channels_against_an_unregularised_run(driven):
    assert driven["greg_has_reg"] and not driven["plain_has_reg"]
    sel = driven["greg_selected"]

    def ratio(run, removed: bool):
        b, a = driven[run + "_before"], driven[run + "_after"]
        pick = lambda k, xs: [x for x, m in zip(xs, sel[k]) if (m == 0) == removed]  # noqa
        return sum(map(sum, (pick(k, a[k]) for k in a))) / sum(map(sum, (pick(k, b[k])
                                                                         for k in b)))
    np.testing.assert_allclose(driven["greg_before"]["stage1/block0/conv1"],
                               driven["plain_before"]["stage1/block0/conv1"])
    # the selected channels shrink against the plain run, and far more than the kept ones
    # (which lose some too: a kept channel's slices include consumer inputs of removed ones)
    removed = ratio("greg", True) / ratio("plain", True)
    kept = ratio("greg", False) / ratio("plain", False)
    print(f"greg / plain norm ratio: removed {removed:.3f}, kept {kept:.3f}")
    assert removed < 0.8 and removed < 0.8 * kept
    # after the event the network is materialised and trains without the penalty
    assert driven["greg_final_plan"] != plan_from_width("resnet20", 4).to_dict()
    assert driven["greg_loss_finite"]


def test_hrank_in_the_loop_is_fed_batches(driven):
    (e,) = driven["hrank_log"]
    assert e["step"] == 0 and not e["soft"]
    dense = count(plan_from_width("resnet20", 4), 32).macs
    assert abs(e["macs"] / dense - 0.5) < 0.01   # the target, within the allocation's 1%
    assert driven["hrank_plan"] != plan_from_width("resnet20", 4).to_dict()


def test_resume_skips_the_logged_soft_events():
    cfg = base_config()
    cfg.prune.schedule, cfg.prune.start_epoch = "soft", 0.0
    cfg.prune.end_epoch, cfg.prune.every_epochs = 0.4, 0.2
    setting = types.SimpleNamespace(config=settings.from_config(cfg), prune=from_config(cfg.prune),
                                    steps_per_epoch=10, total=20, image_size=32)
    plan = plan_from_width("resnet20", 4)
    c = PruningController(setting, plan, "/nonexistent", None, False)
    assert [e for _, e, _ in c.pending] == [0, 2, 4]
    log = [{"step": 0, "soft": True}, {"step": 2, "soft": True}]
    c.resume(plan, {"plan": plan.to_dict(), "prune_events": log}, 2)
    assert [(k, e) for k, e, _ in c.pending] == [(2, 4)]
    assert c.phase == 2
