"""Plot a run's curves from its metrics.jsonl: train loss, and eval top-1 (raw and EMA).

    python benchmarks/plot_run.py runs/quick --out docs/quick_cifar10.png [--title TEXT]

Writes a PNG (and an SVG beside it) and prints the eval table in Markdown.
"""

import argparse
import json
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("workdir")
    ap.add_argument("--out", required=True)
    ap.add_argument("--title", default=None)
    a = ap.parse_args()
    rows = [json.loads(line) for line in open(os.path.join(a.workdir, "metrics.jsonl"))]
    train = [r for r in rows if "train_loss" in r]
    evals = [r for r in rows if "eval_top1" in r]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    ax1.plot([r["epoch"] for r in train], [r["train_loss"] for r in train], lw=1)
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("train loss (label-smoothed cross-entropy)")
    ax1.set_title("training loss")
    ax1.grid(alpha=0.3)
    ep = [r["epoch"] for r in evals]
    ax2.plot(ep, [r["eval_top1"] for r in evals], "o-", label="raw weights")
    if evals and "ema_eval_top1" in evals[0]:
        ax2.plot(ep, [r["ema_eval_top1"] for r in evals], "s-", label="EMA weights")
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("test top-1 accuracy (%)")
    ax2.set_title("evaluation")
    ax2.grid(alpha=0.3)
    ax2.legend()
    fig.suptitle(a.title or os.path.basename(os.path.normpath(a.workdir)))
    fig.tight_layout()
    fig.savefig(a.out, dpi=120)
    fig.savefig(os.path.splitext(a.out)[0] + ".svg")
    print("| epoch | step | top-1 raw | top-1 EMA | top-5 EMA | train loss | img/s |")
    print("|---|---|---|---|---|---|---|")
    for r in evals:
        print(f"| {r['epoch']:.0f} | {r['step']} | {r['eval_top1']:.2f} | "
              f"{r.get('ema_eval_top1', float('nan')):.2f} | "
              f"{r.get('ema_eval_top5', float('nan')):.2f} | {r['train_loss']:.3f} | "
              f"{r['images_per_s']:.0f} |")


if __name__ == "__main__":
    main()
