"""Inference speed of pruned networks: dense, masked-dense, materialised, and the regular
ThinResNet of the same MACs.

    python benchmarks/pruned_speed.py                       # ResNet-56 w=16, CIFAR, batch 128
    python benchmarks/pruned_speed.py --model=resnet50 --width=64 --input-size=224 \
        --batch=256 --dtype=bfloat16 --fractions=0.5        # on an accelerator
    XLA_FLAGS=--xla_cpu_multi_thread_eigen=false taskset -c 0 \
        python benchmarks/pruned_speed.py --round-compare --fractions=0.5,0.25 --rounds=7

For each MAC fraction f, the dense network is pruned with L1 global ranking (weights of
--checkpoint, default: the release's ResNet-56 w=16 if present, else random) to f x its
MACs, with round_to 1 and --round-to; each network runs the jitted eval forward pass on
device-resident data. "vs thin" is the materialised network's images/s over the regular
ThinResNet whose width gives the closest MACs (the equal-cost baseline; >= 0.90 wanted).
Prints a table; --json adds one JSON object (all rows) as the last line.

--round-compare: for each fraction, the round_to 1 and round_to --round-to networks of the
same MAC target, their training step (train_throughput.py's plain step) and evaluation step
timed in turn over --rounds rounds; prints the median per-round speed ratio (round_to 1 over
round_to --round-to) by wall time and by process CPU time (on one core, the CPU time is what
the work costs even when other processes share the core).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import thinjax.commands  # noqa: E402,F401  (tunes the process as the commands do: first)
from thinjax.cost import count  # noqa: E402
from thinjax.models.resnet import ResNet, random_variables  # noqa: E402
from thinjax.plan import plan_from_width  # noqa: E402
from thinjax.prune.allocate import Target, allocate  # noqa: E402
from thinjax.prune.criteria import ScoreInputs, score_groups  # noqa: E402
from thinjax.prune.materialize import materialize  # noqa: E402

RELEASE_R56 = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..",
                           "shared", "checkpoints", "thinresnet-release",
                           "resnet56_width16_cifar10_ema.pt")


def images_per_s(plan, variables, batch: int, size: int, dtype, masks=None,
                 seconds: float = 2.0) -> float:
    """Best-of-3 rate of the jitted eval forward pass on device-resident data."""
    model = ResNet(plan, dtype=dtype)
    v = jax.device_put(variables)
    m = None if masks is None else jax.device_put({k: jnp.asarray(x) for k, x in masks.items()})
    x = jax.device_put(jnp.asarray(
        np.random.default_rng(0).standard_normal((batch, size, size, 3)), jnp.float32))
    f = jax.jit(lambda v, x, m: model.apply(v, x, train=False, masks=m))
    f(v, x, m).block_until_ready()
    t = time.perf_counter()
    f(v, x, m).block_until_ready()
    n = max(1, int(seconds / max(time.perf_counter() - t, 1e-6) / 3))
    best = 0.0
    for _ in range(3):
        t = time.perf_counter()
        for _ in range(n):
            out = f(v, x, m)
        out.block_until_ready()
        best = max(best, n * batch / (time.perf_counter() - t))
    return best


def thin_of_equal_macs(name: str, macs: float, size: int, max_width: int,
                       base_width: int | None):
    """(width, plan) of the regular ThinResNet whose MACs are closest to `macs`."""
    best = None
    for w in range(1, max_width + 1):
        try:
            p = plan_from_width(name, w, base_width=base_width)
        except ValueError:
            continue
        d = abs(count(p, size).macs - macs)
        if best is None or d < best[0]:
            best = (d, w, p)
    return best[1], best[2]


def run(a) -> list[dict]:
    dtype = jnp.dtype(a.dtype)
    if a.checkpoint and os.path.isfile(a.checkpoint):
        from thinjax.checkpoint import load_model
        plan, v, _ = load_model(a.checkpoint)
        src = os.path.basename(a.checkpoint)
    else:
        plan = plan_from_width(a.model, a.width, base_width=a.base_width)
        v, src = random_variables(plan, 0), "random weights"
    dense = count(plan, a.input_size)
    rows = []

    def row(kind, f, p, variables, masks=None, note=""):
        c = count(p, a.input_size)
        ips = images_per_s(p, variables, a.batch, a.input_size, dtype, masks)
        rows.append({"network": kind, "mac_fraction": f, "params": c.params, "macs": c.macs,
                     "images_per_s": ips, "plan": p.describe(), "note": note})
        return ips

    base = row("dense", 1.0, plan, v, note=src)
    scores = score_groups(ScoreInputs(plan, v), "l1")
    for f in a.fractions:
        w, thin = thin_of_equal_macs(a.model, f * dense.macs, a.input_size, a.width, a.base_width)
        t_ips = row(f"thin w={w}", f, thin, random_variables(thin, 1))
        for rt in sorted({1, a.round_to}):
            al = allocate(plan, scores, Target("macs_fraction", f), method="global",
                          round_to=rt, input_size=a.input_size)
            if rt == 1:
                row("masked-dense", f, plan, v, masks=al.masks)
            small, sv = materialize(plan, al.masks, v)
            ips = row(f"materialised r{rt}", f, small, sv)
            rows[-1]["vs_thin"] = ips / t_ips
    for r in rows:
        r["speedup"] = r["images_per_s"] / base
    return rows


def pruned_pair(a, f: float):
    """{round_to: materialised plan} for round_to 1 and a.round_to at MAC fraction f."""
    from thinjax.checkpoint import load_model
    if a.checkpoint and os.path.isfile(a.checkpoint):
        plan, v, _ = load_model(a.checkpoint)
    else:
        plan = plan_from_width(a.model, a.width, base_width=a.base_width)
        v = random_variables(plan, 0)
    scores = score_groups(ScoreInputs(plan, v), "l1")
    return {rt: materialize(plan, allocate(plan, scores, Target("macs_fraction", f),
                                           method="global", round_to=rt,
                                           input_size=a.input_size).masks, v)[0]
            for rt in (1, a.round_to)}


def round_compare(a) -> list[dict]:
    """round_to 1 against round_to a.round_to: train and eval steps, interleaved."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from train_throughput import eval_fn, plain_step
    rows = []
    for f in a.fractions:
        plans = pruned_pair(a, f)
        fns = {}
        for rt, p in plans.items():
            model = ResNet(p, dtype=jnp.dtype(a.dtype))
            fns[("train", rt)] = plain_step(model, a.batch, a.input_size, p.num_classes)
            fns[("eval", rt)] = eval_fn(model, a.batch, a.input_size)
        for fn in fns.values():
            fn(), fn()
        sec = {k: {"wall": [], "cpu": []} for k in fns}
        for _ in range(a.rounds):
            for k, fn in fns.items():
                c, w = time.process_time(), time.perf_counter()
                for _ in range(a.steps):
                    fn()
                sec[k]["cpu"].append((time.process_time() - c) / a.steps)
                sec[k]["wall"].append((time.perf_counter() - w) / a.steps)
        for what in ("train", "eval"):
            row = {"step": what, "mac_fraction": f, **{f"plan r{rt}": p.describe()
                                                          for rt, p in plans.items()}}
            for clock in ("wall", "cpu"):
                one, other = sec[(what, 1)][clock], sec[(what, a.round_to)][clock]
                ratios = [o / i for i, o in zip(one, other)]
                row[clock] = (float(np.median(ratios)), min(ratios), max(ratios))
                row[f"{clock} images_per_s"] = [a.batch / float(np.median(t))
                                                for t in (one, other)]
            rows.append(row)
    return rows


def print_round_compare(a, rows) -> None:
    print(f"round_to 1 over round_to {a.round_to} (speed; median and range of {a.rounds} "
          f"rounds of {a.steps} steps), batch {a.batch}, {a.dtype}")
    for r in rows:
        if r["step"] == "train":
            print(f"MAC fraction {r['mac_fraction']}: r1 {r['plan r1']}\n"
                  f"    r{a.round_to} {r[f'plan r{a.round_to}']}")
        for clock in ("wall", "cpu"):
            m, lo, hi = r[clock]
            i1, i8 = r[f"{clock} images_per_s"]
            print(f"  {r['step']:5s} by {clock:4s} time: {m:.3f} ({lo:.2f}-{hi:.2f}); "
                  f"{i1:,.0f} vs {i8:,.0f} img/s")


def table(rows, device: str) -> str:
    out = [f"device: {device}",
           f"{'network':22s} {'MACs':>9s} {'frac':>5s} {'params':>9s} {'img/s':>9s} "
           f"{'x dense':>7s} {'vs thin':>7s}"]
    for r in rows:
        out.append(f"{r['network']:22s} {r['macs'] / 1e6:8.2f}M {r['macs'] / rows[0]['macs']:5.2f} "
                   f"{r['params']:9,d} {r['images_per_s']:9.0f} {r['speedup']:7.2f} "
                   f"{r.get('vs_thin', float('nan')):7.2f}")
    return "\n".join(out)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="resnet56")
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--base-width", type=int, default=None)
    ap.add_argument("--checkpoint", default=None,
                    help="weights to prune (default for resnet56 w=16: the release's)")
    ap.add_argument("--input-size", type=int, default=32)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--fractions", type=lambda s: [float(x) for x in s.split(",")],
                    default=[0.75, 0.5, 0.25])
    ap.add_argument("--round-to", type=int, default=8)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--round-compare", action="store_true",
                    help="train and eval steps of round_to 1 vs --round-to, interleaved")
    ap.add_argument("--rounds", type=int, default=5, help="(--round-compare)")
    ap.add_argument("--steps", type=int, default=3, help="steps per round (--round-compare)")
    a = ap.parse_args(argv)
    if a.checkpoint is None and (a.model, a.width) == ("resnet56", 16):
        a.checkpoint = RELEASE_R56 if os.path.isfile(RELEASE_R56) else None
    if a.round_compare:
        rows = round_compare(a)
        print_round_compare(a, rows)
        if a.json:
            print(json.dumps({"round_compare": rows}))
        return
    rows = run(a)
    d = jax.devices()[0]
    print(table(rows, f"{d.platform} {d.device_kind}, batch {a.batch}, {a.dtype}"))
    if a.json:
        print(json.dumps({"device": d.device_kind, "batch": a.batch, "rows": rows}))


if __name__ == "__main__":
    main()
