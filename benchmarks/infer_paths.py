"""thinjax's inference paths side by side, one release network, one batch size:

    python benchmarks/infer_paths.py --arch=resnet56 --width=16 --batch=64 --rounds=7

`fold auto`: `thinjax.models.fold.forward_fn` (BatchNorm folded, thinjax's inference
kernels where this CPU has them), what benchmarks/deploy_speed.py times; `fold xla`: the same
on XLA's convolution; `Network.__call__`: the network's own eval forward (BatchNorm not
folded, `thinjax.ops.conv`). Interleaved rounds of 10 calls each; the median and range of
images/s, and each path's largest logit difference from `fold auto`. Release weights come
from the zoo ($THINJAX_ZOO_DIR or the cache).
"""

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402

import thinjax  # noqa: E402
import thinjax.commands  # noqa: E402,F401  (tunes the process as the commands do)
from thinjax import zoo  # noqa: E402
from thinjax.cpu import cpu_description  # noqa: E402
from thinjax.models.fold import forward_fn  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="resnet56")
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=7)
    a = ap.parse_args()
    plan, v = zoo.load(a.arch, width=a.width, dataset="cifar10", progress=False)
    net = thinjax.create_model(a.arch, width=a.width, pretrained=True, dataset="cifar10")
    x = np.random.default_rng(0).standard_normal((a.batch, 32, 32, 3)).astype(np.float32)
    fns = {"fold auto": forward_fn(plan, v, x.shape),
           "fold xla": forward_fn(plan, v, x.shape, impl="xla"),
           "Network.__call__": jax.jit(lambda b: net(b))}
    ref = np.asarray(fns["fold auto"](x))
    diff = {k: float(np.abs(np.asarray(f(x)) - ref).max()) for k, f in fns.items()}
    speed: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(a.rounds):
        for k, f in fns.items():
            f(x).block_until_ready()
            t = time.perf_counter()
            for _ in range(10):
                y = f(x)
            y.block_until_ready()
            speed[k].append(10 * a.batch / (time.perf_counter() - t))
    print(f"{a.arch} w={a.width}, batch {a.batch}, {a.rounds} rounds; CPU: {cpu_description()}")
    print("| path | img/s (median) | range | max abs logit diff from fold auto |")
    print("|---|---|---|---|")
    for k, s in speed.items():
        print(f"| {k} | {np.median(s):,.0f} | {min(s):,.0f}-{max(s):,.0f} | {diff[k]:.1e} |")


if __name__ == "__main__":
    main()
