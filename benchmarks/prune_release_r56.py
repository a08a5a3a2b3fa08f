"""Prune the release's CIFAR-10 ResNet-56 w=16 to the MACs of its w=8, fine-tune briefly,
and compare with the release's regular w=8 network, on the CIFAR-10 JPEG test split.

    python benchmarks/prune_release_r56.py --data=$HOME/data/cifar10-jpeg [--epochs=4]

Steps (each skipped when its output exists in --workdir, so a rerun resumes):
  1. python -m thinjax.convert  L1 filter norms, global ranking, target = w=8's MACs,
     BatchNorm statistics re-estimated on 50 training batches   -> WORKDIR/pruned
  2. python -m thinjax.main --config=WORKDIR/pruned/config.py    -> WORKDIR/finetune
     (the converted network's fine-tune config: SGD Nesterov lr 0.04 at batch 128, cosine,
     0.5 warmup epoch, wd 5e-5, flip + crop, EMA 0.999; --epochs epochs)
  3. the release's w=16 and w=8 evaluated with thinjax.evaluate
Prints a Markdown table (and --json: one JSON object last). ~1.5 h at 4 epochs on a 2-core
CPU (the fine-tune dominates: ~4 min/epoch uncontended).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RELEASE = os.path.join(ROOT, "..", "shared", "checkpoints", "thinresnet-release")


def sh(*args: str) -> None:
    print("+", " ".join(args), flush=True)
    subprocess.run([sys.executable, *args], cwd=ROOT, check=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="the unzipped cifar10-jpeg folder")
    ap.add_argument("--release", default=RELEASE)
    ap.add_argument("--workdir", default=os.path.join(ROOT, "runs", "prune_release_r56"))
    ap.add_argument("--epochs", type=float, default=4.0)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    from thinjax.cost import count
    from thinjax.evaluation import evaluate_checkpoint
    from thinjax.plan import plan_from_width
    w16 = os.path.join(a.release, "resnet56_width16_cifar10_ema.pt")
    w8 = os.path.join(a.release, "resnet56_width8_cifar10_ema.pt")
    target = count(plan_from_width("resnet56", 8), 32).macs
    pruned, ft = os.path.join(a.workdir, "pruned"), os.path.join(a.workdir, "finetune")
    if not os.path.isdir(pruned):
        sh("-m", "thinjax.convert", f"--checkpoint={w16}", f"--output={pruned}",
           "--criterion=l1", "--allocation=global", "--target_kind=macs",
           f"--target={target}", f"--data={a.data}", "--recalibrate_bn=50")
    if not os.path.exists(os.path.join(ft, "results.json")):
        sh("-m", "thinjax.main", f"--config={pruned}/config.py", f"--workdir={ft}",
           f"--config.train.epochs={a.epochs}", f"--config.data.name={a.data}")
    s = json.load(open(os.path.join(pruned, "summary.json")))
    r = json.load(open(os.path.join(ft, "results.json")))
    rel = {n: evaluate_checkpoint(p, a.data, progress=False) for n, p in
           (("w16", w16), ("w8", w8))}
    rows = [
        ("release ResNet-56 w=16 (dense)", rel["w16"]["params"], rel["w16"]["macs"],
         rel["w16"]["top1"]),
        ("L1 global -> w=8 MACs, right after pruning", s["after"]["params"], s["after"]["macs"],
         s["after"]["top1_before_recalibration"]),
        ("  + BN statistics re-estimated (50 batches)", s["after"]["params"],
         s["after"]["macs"], s["after"]["top1"]),
        (f"  + fine-tuned {a.epochs:g} epochs (EMA)", r["params"], r["macs"],
         r["ema_eval_top1"]),
        (f"  + fine-tuned {a.epochs:g} epochs (raw)", r["params"], r["macs"], r["eval_top1"]),
        ("release ThinResNet-56 w=8 (regular)", rel["w8"]["params"], rel["w8"]["macs"],
         rel["w8"]["top1"]),
    ]
    print("| network | params | MACs | top-1 (JPEG test) |\n|---|---|---|---|")
    for name, p, m, t in rows:
        print(f"| {name} | {p:,} | {m / 1e6:.2f} M | {t:.2f}% |")
    if a.json:
        print(json.dumps({"rows": [dict(zip(("network", "params", "macs", "top1"), x))
                                   for x in rows], "finetune_wall_s": r["wall_s"]}))


if __name__ == "__main__":
    main()
