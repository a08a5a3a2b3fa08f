"""Per-layer times of the folded inference network (`thinjax.models.fold.forward`'s
convolutions, each in the layout and on the kernels `forward` gives it: oneDNN NHWC or
thinjax's row kernels, `fold.row_stages`) for the round_to 1 and round_to 8 L1 prunings of
the release's ResNet-56 w=16 at equal MACs, with per-stage sums.

    XLA_FLAGS=--xla_cpu_multi_thread_eigen=false THINJAX_INFER_THREADS=1 taskset -c 0 \
        python benchmarks/infer_layers.py --fractions=0.5,0.25 [--layers] [--force=dnn]

Each convolution runs alone (jitted, kernels laid out as `fold.prepare` lays them, random
data, batch --batch) --reps times, interleaved over both networks; the minimum time is
kept (a shared machine's load only ever adds). Convolutions with a residual alias it with
their output, so each call copies the residual first (as `forward` does not): compare
such layers with each other only. --force=dnn or rows computes every stage so.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import defaultdict

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import thinjax.commands  # noqa: E402,F401  (tunes the process as the commands do: first)
from thinjax import cpu  # noqa: E402
from thinjax.models import fold  # noqa: E402
from thinjax.ops import infer  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pruned_speed import RELEASE_R56, pruned_pair  # noqa: E402


def conv_fn(c, rows: bool, n: int):
    """A callable running convolution `c` (`fold._convs`) on random data as `forward` does."""
    r = np.random.default_rng(0)
    oh, ow = -(-c.h // c.stride), -(-c.w // c.stride)
    x = jnp.asarray(r.standard_normal((n, c.h, c.w, c.ci)), jnp.float32)
    k = jnp.asarray(r.standard_normal((c.k, c.k, c.ci, c.co)) * 0.1, jnp.float32)
    b = jnp.asarray(r.standard_normal(c.co), jnp.float32)
    res = (jnp.asarray(r.standard_normal((n, oh, ow, c.co)), jnp.float32)
           if c.conv == "conv2" else None)
    pad = (c.k - 1) // 2
    if rows:
        x, res = infer.to_rows(x), None if res is None else infer.to_rows(res)
        k = infer.layout_kernel(k, infer.row_block(c.co))
    else:
        k = infer.layout_kernel(k, infer.kernel_layout(x.shape, c.k, c.co, c.stride, pad))
    fn = jax.jit(lambda x, k, b, res: infer.conv2d_fused(x, k, b, c.stride, pad, res, True,
                                                         "onednn", rows=rows))
    fn(x, k, b, res).block_until_ready()
    return lambda: fn(x, k, b, res).block_until_ready()


def measure(a, f: float) -> None:
    plans = pruned_pair(a, f)
    shape = (a.batch, a.input_size, a.input_size, 3)
    nets = {}
    for rt, p in plans.items():
        rows = fold.row_stages(p, shape)
        if a.force:
            rows = (a.force == "rows",) * len(p.stages)
        nets[rt] = (rows, [(c, conv_fn(c, rows[c.stage], a.batch))
                           for c in fold._convs(p, shape)])
    times = {rt: [[] for _ in convs] for rt, (_, convs) in nets.items()}
    for _ in range(a.reps):
        for rt, (_, convs) in nets.items():
            for i, (_, fn) in enumerate(convs):
                t = time.perf_counter()
                fn()
                times[rt][i].append(time.perf_counter() - t)
    for rt, (rows, convs) in nets.items():
        stages = defaultdict(lambda: [0.0, 0])
        for i, (c, _) in enumerate(convs):
            t, oh = min(times[rt][i]), -(-c.h // c.stride)
            macs = c.n * oh * -(-c.w // c.stride) * c.ci * c.co * c.k * c.k
            stages[c.stage][0] += t
            stages[c.stage][1] += macs
            if a.layers:
                print(f"  r{rt} {c.key}/{c.conv or 'stem'} {c.ci}->{c.co} k{c.k} s{c.stride} "
                      f"{'rows' if rows[c.stage] else 'dnn '} {t * 1e6:7.0f} us "
                      f"{macs / t / 1e9:5.1f} GMAC/s")
        total = sum(t for t, _ in stages.values())
        print(f"{f:.0%} MACs r{rt}: " + "  ".join(
            f"stage{s + 1} {'rows' if rows[s] else 'dnn'} {t * 1e3:.1f} ms {m / t / 1e9:.1f} "
            f"GMAC/s" for s, (t, m) in sorted(stages.items())) + f"  total {total * 1e3:.1f} ms")


def parser(doc: str, reps: int) -> argparse.ArgumentParser:
    """The options of the per-layer benchmarks (this one and train_layers.py)."""
    ap = argparse.ArgumentParser(description=doc,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fractions", type=lambda s: [float(x) for x in s.split(",")],
                    default=[0.5, 0.25])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--reps", type=int, default=reps)
    ap.add_argument("--layers", action="store_true", help="print every convolution")
    return ap


def release_r56(a: argparse.Namespace) -> argparse.Namespace:
    """`a` with the network the per-layer benchmarks prune (`pruned_pair`'s fields): the
    release's ResNet-56 w=16 (random weights without the release), round_to 1 against 8."""
    a.model, a.width, a.base_width, a.input_size, a.round_to = "resnet56", 16, None, 32, 8
    a.checkpoint = RELEASE_R56 if os.path.isfile(RELEASE_R56) else None
    print(f"CPU: {cpu.cpu_description()}; load average {os.getloadavg()[0]:.1f}; "
          f"batch {a.batch}")
    return a


def main(argv=None):
    ap = parser(__doc__, reps=15)
    ap.add_argument("--force", choices=["dnn", "rows"], default=None)
    a = release_r56(ap.parse_args(argv))
    for f in a.fractions:
        measure(a, f)


if __name__ == "__main__":
    main()
