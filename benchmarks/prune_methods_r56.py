"""Every pruning method on the release's CIFAR-10 ResNet-56 w=16, pruned to the MACs of its
w=8, before and after the same short fine-tune; prints a Markdown table.

    python benchmarks/prune_methods_r56.py --data=/tmp/cifar10-jpeg [--steps=200 --batch=64]
        [--methods=l1,fpgm,...] [--workdir=runs/prune_methods_r56] [--json]

One-shot criteria (l1, fpgm, hrank, bn_scale, taylor, group_norm, random; hrank also with
uniform allocation): `thinjax.conversion.convert`, the library call behind

    python -m thinjax.convert --checkpoint=RELEASE_W16 --output=WORKDIR/METHOD/pruned \\
        --criterion=METHOD --allocation=global --target_kind=macs --target=31547712 --data=DATA

(without the dense network's evaluation, which is the same for every method), then the
converted network's fine-tune (`python -m thinjax.main --config=.../pruned/config.py`) for
--steps steps of --batch images: SGD Nesterov, lr 0.04 at batch 128 (scaled linearly),
10% warmup then cosine, weight decay 5e-5, flip + crop, no EMA, top-1 of the raw weights.

Training-time methods: `thinjax.main` with their config (configs/prune_r56_sfp.py,
configs/prune_r56_sparse.py:group_lasso|greg) from the release's w=16: --reg_steps steps
of soft filter pruning or of the regulariser on the dense network, the hard pruning event at
step --reg_steps (materialised), then the same --steps fine-tune steps (one cosine over
the whole run). "after pruning" is the checkpoint at step --reg_steps (dense, before the
event) pruned by the method's criterion through `convert`: the event's own masks.

Every output is kept in --workdir and a rerun skips what exists. Top-1 on the full
10,000-image CIFAR-10 JPEG test split.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RELEASE = os.path.join(ROOT, "..", "shared", "checkpoints", "thinresnet-release")
ONESHOT = {"l1": ("l1", "global"), "fpgm": ("fpgm", "global"), "hrank": ("hrank", "global"),
           "hrank_uniform": ("hrank", "uniform"), "bn_scale": ("bn_scale", "global"),
           "taylor": ("taylor", "global"), "group_norm": ("group_norm", "global"),
           "random": ("random", "global")}
TRAINING = {"sfp": ("configs/prune_r56_sfp.py", "l2", "global"),
            "group_lasso": ("configs/prune_r56_sparse.py:group_lasso", "group_norm", "global"),
            "greg": ("configs/prune_r56_sparse.py:greg", "l1", "global")}
N_TRAIN = 50_000


def main_args(a, config: str, workdir: str, total: int) -> list[str]:
    """The fine-tune's thinjax.main flags, the same for every method."""
    warmup = 0.1 * total * a.batch / N_TRAIN
    return ["-m", "thinjax.main", f"--config={config}", f"--workdir={workdir}",
            f"--config.data.name={a.data}",
            f"--config.train.total_steps={total}", f"--config.train.batch_size={a.batch}",
            "--config.optim.lr=0.04", "--config.optim.lr_batch=128",
            f"--config.optim.warmup_epochs={warmup:.6g}", "--config.ema.enabled=False",
            "--config.train.eval_every_epochs=1000", "--config.train.log_every=50",
            "--config.data.cache=none", "--config.data.shuffle_buffer=5000",
            "--config.train.async_checkpoints=False"]


def sh(args: list[str], log: str) -> float:
    """Runs `python args` in the repository root, output to `log`; returns its wall time."""
    print("+ python", " ".join(args), flush=True)
    t = time.perf_counter()
    with open(log, "w") as f:
        r = subprocess.run([sys.executable, *args], cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)
    if r.returncode:
        raise SystemExit(f"failed ({r.returncode}); see {log}")
    return time.perf_counter() - t


def prune(a, src: str, out: str, criterion: str, allocation: str, target: int) -> dict:
    """convert's summary (cached in `out`), with its wall time."""
    from thinjax.conversion import convert
    from thinjax.prune.spec import PruneSpec
    if not os.path.exists(os.path.join(out, "summary.json")):
        t = time.perf_counter()
        spec = PruneSpec(criterion=criterion, allocation=allocation, target_kind="macs",
                         target=float(target))
        s = convert(src, out, spec=spec, data=a.data, evaluate_before=False)
        s["wall_s"] = time.perf_counter() - t
        json.dump(s, open(os.path.join(out, "summary.json"), "w"), indent=1)
    return json.load(open(os.path.join(out, "summary.json")))


def finetune(a, config: str, extra: list[str], workdir: str, total: int) -> dict:
    res = os.path.join(workdir, "results.json")
    if not os.path.exists(res):
        os.makedirs(workdir, exist_ok=True)
        sh(main_args(a, config, workdir, total) + extra,
           os.path.join(workdir, "..", "train.log"))
    return json.load(open(res))


def oneshot_row(a, name: str, w16: str, target: int) -> dict:
    crit, alloc = ONESHOT[name]
    d = os.path.join(a.workdir, name)
    s = prune(a, w16, os.path.join(d, "pruned"), crit, alloc, target)
    r = finetune(a, f"{d}/pruned/config.py", [], os.path.join(d, "finetune"), a.steps)
    return {"method": name, "criterion": crit, "allocation": alloc, "params": r["params"],
            "macs": r["macs"], "after_prune": s["after"]["top1"], "after_ft": r["eval_top1"],
            "prune_s": s["wall_s"], "ft_s": r["wall_s"], "plan": s["after"]["stages"]}


def training_row(a, name: str, w16: str, target: int) -> dict:
    cfg, crit, alloc = TRAINING[name]
    d = os.path.join(a.workdir, name)
    spe = N_TRAIN // a.batch
    ev = a.reg_steps / spe
    extra = [f"--config.init_from={w16}",
             f"--config.train.checkpoint_every={a.reg_steps}"]
    if name == "sfp":
        extra += ["--config.prune.start_epoch=0", f"--config.prune.end_epoch={ev:.8g}",
                  f"--config.prune.every_epochs={a.soft_every / spe:.8g}"]
    else:
        extra += [f"--config.prune.start_epoch={ev:.8g}"]
        if name == "greg":  # the ceiling reached half-way through the regularisation
            extra += [f"--config.prune.greg_every={max(1, a.reg_steps // 20)}"]
    r = finetune(a, cfg, extra, os.path.join(d, "run"), a.reg_steps + a.steps)
    s = prune(a, os.path.join(d, "run", "checkpoints", str(a.reg_steps)),
              os.path.join(d, "pruned_at_event"), crit, alloc, target)
    return {"method": name, "criterion": crit, "allocation": alloc, "params": r["params"],
            "macs": r["macs"], "after_prune": s["after"]["top1"], "after_ft": r["eval_top1"],
            "prune_s": s["wall_s"], "ft_s": r["wall_s"], "plan": s["after"]["stages"],
            "reg_steps": a.reg_steps}


def print_table(a, rows: list[dict], dense: float) -> None:
    print(f"\nrelease ResNet-56 w=16 (dense): {dense:.2f}%; fine-tune {a.steps} steps x "
          f"{a.batch} images; training-time methods: +{a.reg_steps} dense steps first")
    print("| method | allocation | params | MACs | top-1 after pruning | top-1 after "
          "fine-tune | prune s | train s |\n|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| `{r['method']}` | {r['allocation']} | {r['params']:,} | "
              f"{r['macs'] / 1e6:.2f} M | {r['after_prune']:.2f}% | {r['after_ft']:.2f}% | "
              f"{r['prune_s']:.0f} | {r['ft_s']:.0f} |")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="the unzipped cifar10-jpeg folder")
    ap.add_argument("--release", default=RELEASE)
    ap.add_argument("--workdir", default=os.path.join(ROOT, "runs", "prune_methods_r56"))
    ap.add_argument("--methods", default=",".join([*ONESHOT, *TRAINING]))
    ap.add_argument("--steps", type=int, default=200, help="fine-tune steps")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--reg_steps", type=int, default=100,
                    help="training-time methods: dense steps before the hard event")
    ap.add_argument("--soft_every", type=int, default=25, help="sfp: steps between events")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    a.workdir = os.path.abspath(a.workdir)
    from thinjax.cost import count
    from thinjax.evaluation import evaluate_checkpoint
    from thinjax.plan import plan_from_width
    w16 = os.path.abspath(os.path.join(a.release, "resnet56_width16_cifar10_ema.pt"))
    target = count(plan_from_width("resnet56", 8), 32).macs
    os.makedirs(a.workdir, exist_ok=True)
    dense_f = os.path.join(a.workdir, "dense.json")
    if not os.path.exists(dense_f):
        json.dump(evaluate_checkpoint(w16, a.data, progress=False), open(dense_f, "w"))
    dense = json.load(open(dense_f))["top1"]
    rows = []
    for name in a.methods.split(","):
        row = (oneshot_row if name in ONESHOT else training_row)(a, name, w16, target)
        rows.append(row)
        print(json.dumps(row), flush=True)
    print_table(a, rows, dense)
    if a.json:
        print(json.dumps({"dense_top1": dense, "rows": rows, "steps": a.steps,
                          "batch": a.batch, "reg_steps": a.reg_steps}))


if __name__ == "__main__":
    main()
