"""Per-layer times of the training convolutions (oneDNN's forward, input gradient and
kernel gradient, as `thinjax.ops.conv.onednn_conv2d` calls them) for the round_to 1 and
round_to 8 L1 prunings of the release's ResNet-56 w=16 at equal MACs, with per-stage sums;
and, with --pad, what each round_to 1 layer would cost with its input and/or output
channels padded with zeros to a multiple of --pad (the padded layer's own time, no copy
counted: a lower bound on what computing padded channel blocks inside the convolution
could give).

    XLA_FLAGS=--xla_cpu_multi_thread_eigen=false taskset -c 0 \
        python benchmarks/train_layers.py --fractions=0.5,0.25 --pad=8 [--layers]

Each pass runs alone (jitted, random data, batch --batch) --reps times, interleaved over
the networks; the minimum time is kept (a shared machine's load only ever adds).
"""

from __future__ import annotations

import os
import sys
import time
from collections import defaultdict

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import thinjax.commands  # noqa: E402,F401  (tunes the process as the commands do: first)
from thinjax.models import fold  # noqa: E402
from thinjax.ops.conv import _call  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from infer_layers import parser, release_r56  # noqa: E402
from pruned_speed import pruned_pair  # noqa: E402

PASSES = ("fwd", "bwd_data", "bwd_weights")


def pass_fns(n: int, h: int, ci: int, co: int, k: int, stride: int) -> list:
    """Callables running oneDNN's three training passes of one convolution."""
    r = np.random.default_rng(0)
    oh, pad = -(-h // stride), (k - 1) // 2
    x = jnp.asarray(r.standard_normal((n, h, h, ci)), jnp.float32)
    w = jnp.asarray(r.standard_normal((k, k, ci, co)) * 0.1, jnp.float32)
    dy = jnp.asarray(r.standard_normal((n, oh, oh, co)), jnp.float32)
    kw = dict(stride=stride, padding=pad)
    fns = [jax.jit(lambda x, w, dy: _call("thinjax_onednn_conv_fwd", dy, x, w, **kw)),
           jax.jit(lambda x, w, dy: _call("thinjax_onednn_conv_bwd_data", x, dy, w, **kw)),
           jax.jit(lambda x, w, dy: _call("thinjax_onednn_conv_bwd_weights", w, x, dy, **kw))]
    for fn in fns:
        fn(x, w, dy).block_until_ready()
    return [lambda fn=fn: fn(x, w, dy).block_until_ready() for fn in fns]


def up(c: int, m: int) -> int:
    return -(-c // m) * m


def variants(c, pad: int) -> dict[str, tuple[int, int]]:
    """(ci, co) of the layer as it is and, with `pad`, padded on each side and both."""
    out = {"as is": (c.ci, c.co)}
    if pad:
        out.update({"pad in": (up(c.ci, pad), c.co), "pad out": (c.ci, up(c.co, pad)),
                    "pad both": (up(c.ci, pad), up(c.co, pad))})
    return out


def measure(a, f: float) -> None:
    plans = pruned_pair(a, f)
    shape = (a.batch, a.input_size, a.input_size, 3)
    layers = []  # (round_to, conv, variant, fns)
    for rt, p in plans.items():
        for c in fold._convs(p, shape):
            for name, (ci, co) in variants(c, a.pad if rt == 1 else 0).items():
                if name == "as is" or (ci, co) != (c.ci, c.co):
                    layers.append((rt, c, name, pass_fns(a.batch, c.h, ci, co, c.k, c.stride)))
    times = [[[] for _ in PASSES] for _ in layers]
    for _ in range(a.reps):
        for i, (*_, fns) in enumerate(layers):
            for j, fn in enumerate(fns):
                t = time.perf_counter()
                fn()
                times[i][j].append(time.perf_counter() - t)
    report(a, f, layers, [[min(t) for t in ts] for ts in times])


def report(a, f: float, layers, best) -> None:
    # (round_to, stage) -> variant -> [seconds per pass]; the padded best is per layer
    stages = defaultdict(lambda: defaultdict(lambda: np.zeros(len(PASSES))))
    macs, by_layer = defaultdict(int), defaultdict(dict)
    for (rt, c, name, _), t in zip(layers, best):
        by_layer[(rt, c.stage, c.key, c.conv)][name] = np.asarray(t)
        if name == "as is":
            oh = -(-c.h // c.stride)
            macs[(rt, c.stage)] += a.batch * oh * oh * c.ci * c.co * c.k * c.k
            stages[(rt, c.stage)]["as is"] += t
            if a.layers:
                print(f"  r{rt} {c.key}/{c.conv or 'stem'} {c.ci}->{c.co} k{c.k} s{c.stride} "
                      + " ".join(f"{p} {s * 1e6:6.0f} us" for p, s in zip(PASSES, t)))
    for (rt, stage, key, conv), v in by_layer.items():
        if len(v) == 1:  # no padded variants (round_to 8, or channels already whole)
            stages[(rt, stage)]["best padding"] += v["as is"]
            continue
        t = np.stack(list(v.values()))
        if a.layers:
            names, pick = list(v), np.argmin(t, axis=0)
            print(f"  r{rt} {key}/{conv or 'stem'} fastest: "
                  + ", ".join(f"{p} {names[i]}" for p, i in zip(PASSES, pick)))
        stages[(rt, stage)]["best padding"] += t.min(axis=0)
    for (rt, s), v in sorted(stages.items()):
        for name, t in v.items():
            if name == "best padding" and rt != 1:
                continue
            print(f"{f:.0%} MACs r{rt} stage{s + 1} {name:>12}: " + "  ".join(
                f"{p} {x * 1e3:6.2f} ms" for p, x in zip(PASSES, t))
                + f"  sum {t.sum() * 1e3:6.2f} ms, {3 * macs[(rt, s)] / t.sum() / 1e9:5.1f}"
                " GMAC/s")
    for name in ("as is", "best padding"):
        tot = {rt: sum(v[name].sum() for (r, _), v in stages.items() if r == rt)
               for rt in (1, a.round_to)}
        print(f"{f:.0%} MACs, all layers, round_to 1 {name}: {tot[1] * 1e3:.1f} ms against "
              f"round_to {a.round_to}'s {tot[a.round_to] * 1e3:.1f} ms: "
              f"{tot[a.round_to] / tot[1]:.2f}x its speed")


def main(argv=None):
    ap = parser(__doc__, reps=9)
    ap.add_argument("--pad", type=int, default=0, help="also time channels padded to this")
    a = release_r56(ap.parse_args(argv))
    for f in a.fractions:
        measure(a, f)


if __name__ == "__main__":
    main()
