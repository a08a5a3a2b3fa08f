"""Why soft filter pruning collapses on a trained BatchNorm network: how fast the zeroed
filters grow back, and how much of the kept set the next soft event swaps out.

    python benchmarks/sfp_regrowth.py --data=/tmp/cifar10-jpeg [--workdir=runs/sfp_regrowth]

Runs `thinjax.main` twice from the release's CIFAR-10 ResNet-20 w=16, pruned to the MACs of
its w=8 by L2 filter norms (global allocation), 100 steps of 64 images (SGD Nesterov, lr
0.04 at batch 128, cosine, no EMA), checkpoints every 5 steps:
  * ``sfp``: soft events at steps 0 and 25 (filters zeroed, kept trainable), the hard event
    at step 50 (materialised), 50 more steps;
  * ``oneshot``: the same L2 masks applied hard at step 0, then 100 steps.
Prints, per channel group, the mean L2 norm of the filters kept by the first event and of
those it zeroed, at steps 0 (before zeroing), 5, 10, 25; inside blocks, how many zeroed
filters are still exactly 0 at step 25, how many had a negative BN shift, and both; how many
channels the second event (scored on step 25's weights) swaps; and both runs' top-1 on the
test split.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RELEASE = os.path.join(ROOT, "..", "shared", "checkpoints", "thinresnet-release",
                       "resnet20_width16_cifar10_ema.pt")
STEPS = (5, 10, 25)


def run(a, name: str, extra: list[str]) -> str:
    """Trains (unless done) and returns the run's workdir."""
    wd = os.path.join(a.workdir, name)
    if not os.path.exists(os.path.join(wd, "results.json")):
        spe = 50_000 / 64
        cmd = [sys.executable, "-m", "thinjax.main", "--config=configs/prune_r56_sfp.py",
               f"--workdir={wd}", "--config.model.name=resnet20",
               f"--config.prune.target={a.target}", f"--config.init_from={a.release}",
               f"--config.data.name={a.data}", "--config.train.total_steps=100",
               "--config.train.batch_size=64", "--config.optim.lr=0.04",
               "--config.optim.lr_batch=128", f"--config.optim.warmup_epochs={10 / spe:.6g}",
               "--config.ema.enabled=False", "--config.train.eval_every_epochs=1000",
               "--config.data.cache=none", "--config.data.shuffle_buffer=5000",
               "--config.train.async_checkpoints=False", "--config.prune.start_epoch=0",
               f"--config.prune.end_epoch={50 / spe:.8g}",
               f"--config.prune.every_epochs={25 / spe:.8g}",
               "--config.train.checkpoint_every=5", "--config.train.keep_checkpoints=100",
               "--config.train.keep_best=False", *extra]
        print("+", " ".join(cmd[1:]), flush=True)
        subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    return wd


def leaf(v: dict, path: str) -> np.ndarray:
    t = v["params"]
    for p in path.split("/"):
        t = t[p]
    return np.asarray(t)


def filter_norms(v: dict, kernels: tuple[str, ...]) -> np.ndarray:
    """Per output channel, the mean over the group's producing kernels of the filter L2 norm."""
    return sum(np.sqrt((leaf(v, k) ** 2).sum(axis=(0, 1, 2))) for k in kernels) / len(kernels)


def dead(v0: dict, v25: dict, grp, zeroed: np.ndarray) -> str:
    """Inner groups: 'a/b/c' = zeroed channels still exactly 0 at step 25 / zeroed channels
    whose BN shift was < 0 (ReLU(shift) = 0 passes no gradient back) / both."""
    if grp.kind != "inner":
        return "-"
    shift = leaf(v0, next(p for p, _ in grp.producers if p.endswith("/bias")))
    still = filter_norms(v25, grp.kernels) == 0
    neg = (shift < 0) & zeroed
    return f"{int((still & zeroed).sum())}/{int(neg.sum())}/{int((still & neg).sum())}"


def regrowth_table(a, wd: str) -> None:
    from thinjax.config import base_config
    from thinjax.load import load_model
    from thinjax.prune.allocate import Target
    from thinjax.prune.groups import channel_groups
    from thinjax.prune.pruner import compute_masks
    plan, v0, _ = load_model(a.release)
    cfg = base_config().prune
    cfg.criterion, cfg.allocation = "l2", "global"
    masks = lambda v: {g: np.asarray(m, bool) for g, m in  # noqa: E731
                       compute_masks(plan, v, cfg, Target("macs", a.target)).masks.items()}
    m0, groups = masks(v0), channel_groups(plan)
    vs = {s: load_model(os.path.join(wd, "checkpoints", str(s)))[1] for s in STEPS}
    print("\n| group | kept | " + " | ".join(f"step {s} kept / zeroed" for s in (0, *STEPS))
          + " | still 0 / shift < 0 / both |\n|---|---|" + "---|" * (2 + len(STEPS)))
    for g, grp in groups.items():
        m = m0[g]
        cells = [f"{n[m].mean():.3f} / {n[~m].mean():.3f}" for n in
                 (filter_norms(v, grp.kernels) for v in (v0, *vs.values()))]
        print(f"| {g} | {m.sum()}/{m.size} | " + " | ".join(cells)
              + f" | {dead(v0, vs[25], grp, ~m)} |")
    m1 = masks(vs[25])
    back = sum(int((~m0[g] & m1[g]).sum()) for g in groups)
    out = sum(int((m0[g] & ~m1[g]).sum()) for g in groups)
    print(f"\nevent 2 (step 25) keeps {back} of the {sum(int((~m).sum()) for m in m0.values())} "
          f"channels event 1 zeroed, and zeroes {out} of the "
          f"{sum(int(m.sum()) for m in m0.values())} it kept")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="the unzipped cifar10-jpeg folder")
    ap.add_argument("--release", default=RELEASE)
    ap.add_argument("--workdir", default=os.path.join(ROOT, "runs", "sfp_regrowth"))
    a = ap.parse_args(argv)
    a.workdir, a.release = os.path.abspath(a.workdir), os.path.abspath(a.release)
    from thinjax.cost import count
    from thinjax.plan import plan_from_width
    a.target = count(plan_from_width("resnet20", 8), 32).macs
    sfp = run(a, "sfp", [])
    one = run(a, "oneshot", ["--config.prune.schedule=oneshot"])
    regrowth_table(a, sfp)
    for name, wd in (("sfp", sfp), ("oneshot", one)):
        r = json.load(open(os.path.join(wd, "results.json")))
        print(f"{name}: top-1 {r['eval_top1']:.2f}% after 100 steps")


if __name__ == "__main__":
    main()
