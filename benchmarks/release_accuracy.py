"""Top-1/top-5 of the study's released checkpoints, evaluated by thinjax on real data.

    python benchmarks/release_accuracy.py --data=DIR/cifar10-jpeg [--release=DIR]

Prints a Markdown table next to the PyTorch figures of ../shared/checkpoints/README.md.
About 2 minutes on a 2-core CPU.
"""

import argparse
import json
import os
import sys

import thinjax.commands  # noqa: F401  (tunes the process as the commands do: first)
from thinjax.evaluation import evaluate_checkpoint

PYTORCH = {  # top-1 on the JPEG test split, from the release's own PyTorch code
    "resnet20_width4_cifar10_ema.pt": 75.76,
    "resnet20_width8_cifar10_ema.pt": 81.67,
    "resnet20_width16_cifar10_ema.pt": 87.20,
    "resnet56_width8_cifar10_ema.pt": 87.39,
    "resnet56_width16_cifar10_ema.pt": 89.51,
}


def main():
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True, help="unzipped cifar10-jpeg folder")
    ap.add_argument("--release", default=os.path.join(os.path.dirname(here), "shared",
                                                       "checkpoints", "thinresnet-release"))
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    rows = []
    print("| checkpoint | params | MACs | PyTorch top-1 | thinjax top-1 | thinjax top-5 | img/s |")
    print("|---|---|---|---|---|---|---|")
    for name, ref in PYTORCH.items():
        r = evaluate_checkpoint(os.path.join(a.release, name), a.data, "test", progress=False)
        rows.append({"checkpoint": name, "pytorch_top1": ref, **{k: r[k] for k in (
            "params", "macs", "top1", "top5", "count", "images_per_s")}})
        print(f"| {name} | {r['params']:,} | {r['macs'] / 1e6:.2f} M | {ref:.2f}% | "
              f"{r['top1']:.2f}% | {r['top5']:.2f}% | {r['images_per_s']:.0f} |", flush=True)
    if a.json:
        print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
