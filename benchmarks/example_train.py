"""An example network's training step with its ordinary convolutions on
thinjax.ops.dense_conv (oneDNN where it can be used) against XLA's, interleaved.

    python benchmarks/example_train.py --widths=0.25,0.5 --batch=128
    python benchmarks/example_train.py --widths=0.5 --rounds=1 --steps=2 --profile

The step is the quick recipe's (configs/quick_mobilenetv2.py: thinjax.train.run's jitted
train_step with its optimizer, label smoothing and EMA, the state donated) for
``MobileNetV2(width=W)`` (``--example``: any of thinjax.trace.example.EXAMPLES) on a
fixed random batch. Arms:
  xla      nn.Conv's default convolution (lax) for every convolution that the model
           gives thinjax.ops.dense_conv: the example networks before dense_conv
  thinjax  the model as it is (dense_conv: oneDNN when thinjax.ops.conv.status() says so)
  thinjax, fused BN  (--bn) the model with every nn.BatchNorm computed by the ResNets'
           thinjax.models.batchnorm.BatchNorm (same variables, hand-written backward)
Depthwise layers are thinjax.ops.depthwise's in every arm. The arms alternate in `--rounds`
rounds of `--steps` steps so that all see the same machine load; printed: medians in
images/s by wall and by process CPU time, the median and range of the per-round ratios to
the xla arm, each arm's first loss, the CPU and the load average. ``--profile``: where
each arm's step spends its time, by category (one jax.profiler event per XLA thunk;
benchmarks/profile_step.py's method).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import functools
import glob
import gzip
import json
import os
import re
import statistics
import sys
import tempfile
import time
import types

import flax.linen as nn
import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from profile_step import parse_hlo  # noqa: E402

import thinjax.commands  # noqa: E402,F401  (tunes the process as the commands do)
from thinjax import sharding  # noqa: E402
from thinjax.cpu import cpu_description  # noqa: E402
from thinjax.models.batchnorm import BatchNorm  # noqa: E402
from thinjax.ops import conv, dense_conv  # noqa: E402
from thinjax.settings import as_settings  # noqa: E402
from thinjax.trace.example import example_net  # noqa: E402
from thinjax.trace.networks import network  # noqa: E402
from thinjax.train.run import make_setting  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _fused_bn(next_fun, args, kwargs, ctx):
    """Interceptor: an nn.BatchNorm computed by thinjax.models.batchnorm.BatchNorm (the
    ResNets': the same variables, a hand-written backward pass, two-pass variance)."""
    mod = ctx.module
    if type(mod) is nn.BatchNorm and ctx.method_name == "__call__":
        return BatchNorm(use_running_average=mod.use_running_average, momentum=mod.momentum,
                         epsilon=mod.epsilon, parent=mod.scope)(*args, **kwargs)
    return next_fun(*args, **kwargs)


ARMS = {"xla": (dense_conv.as_lax,), "thinjax": (), "thinjax, fused BN": (_fused_bn,)}


def _intercepted(interceptors) -> contextlib.ExitStack:
    stack = contextlib.ExitStack()
    for f in interceptors:
        stack.enter_context(nn.intercept_methods(f))
    return stack


def quick_config(example: str, width: float, batch: int):
    sys.path.insert(0, ROOT)
    from configs.quick_mobilenetv2 import get_config
    c = get_config()
    c.model.example, c.model.width_mult, c.train.batch_size = example, width, batch
    return as_settings(c)


def step_fns(example: str, width: float, batch: int, arms: list[str]
             ) -> tuple[dict, dict]:
    """{arm: callable running one step and blocking}, {arm: the step's first loss}."""
    cfg = quick_config(example, width, batch)
    net = network(example_net(example, 32, width=width, num_classes=10), None, 32)
    source = types.SimpleNamespace(num_classes=10, num_examples=lambda split: 50_000)
    s = make_setting(cfg, net, source, sharding.make_mesh(1))
    rng = np.random.default_rng(0)
    data = {"image": rng.standard_normal((batch, 32, 32, 3)).astype(np.float32),
            "label": rng.integers(0, 10, batch).astype(np.int32)}
    fns, first = {}, {}
    for arm in arms:
        run = s.run_for(net)   # a jit of its own per arm (its own trace and cache)
        state = [s.init_state(net, run.tx, None, {})]
        ctx = functools.partial(_intercepted, ARMS[arm])

        def one(run=run, state=state, ctx=ctx):
            with ctx():   # the interceptor acts when the step is traced
                state[0], m = run.step(state[0], data)
            return float(m["loss"])

        def hlo(run=run, state=state, ctx=ctx):
            with ctx():
                return run.step.lower(state[0], data).compile().as_text()

        first[arm] = one()
        one.hlo = hlo
        fns[arm] = one
    return fns, first


def interleaved(fns: dict, rounds: int, steps: int, batch: int
                ) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """images/s of each callable per round, the callables alternating within a round, by
    wall time and by process CPU time (other processes' turns on the cores left out; the
    work of all this process's threads, spinning included)."""
    rate = {k: [] for k in fns}
    cpu = {k: [] for k in fns}
    for _ in range(rounds):
        for k, f in fns.items():
            t, c = time.perf_counter(), time.process_time()
            for _ in range(steps):
                f()
            rate[k].append(steps * batch / (time.perf_counter() - t))
            cpu[k].append(steps * batch / (time.process_time() - c))
    return rate, cpu


def category(op: str, op_name: str, inner: list[str]) -> str:
    """The category of one top-level XLA instruction of an example network's step."""
    bwd = "transpose(" in op_name
    if op.startswith("custom-call:thinjax_onednn_conv"):
        return "conv bwd (oneDNN)" if not op.endswith("_fwd") else "conv fwd (oneDNN)"
    if op == "convolution" or "convolution" in inner:
        return "conv bwd (XLA)" if bwd or not op_name else "conv fwd (XLA)"
    if "thinjax_depthwise_conv" in op_name:
        return "depthwise bwd" if bwd else "depthwise fwd"
    if re.search(r"/bn\d*/", op_name):
        return "BatchNorm bwd" if bwd else "BatchNorm fwd"
    if "jvp(" not in op_name and "transpose(" not in op_name:
        return "optimizer, EMA, other" if op_name or not inner else "layout (transpose/copy)"
    return "elementwise, pool, head, loss bwd" if bwd else "elementwise, pool, head, loss fwd"


def profile(f, steps: int) -> tuple[dict, float]:
    """{category: ms per step} of `f`'s jitted step and the wall ms per step."""
    text = f.hlo()
    module = re.match(r"HloModule ([\w.-]+)", text).group(1)
    comps, entry = parse_hlo(text)
    with tempfile.TemporaryDirectory() as d:
        t = time.perf_counter()
        jax.profiler.start_trace(d, create_perfetto_trace=True)
        for _ in range(steps):
            f()
        jax.profiler.stop_trace()
        wall = (time.perf_counter() - t) / steps * 1e3
        path = sorted(glob.glob(os.path.join(d, "**", "*.trace.json.gz"), recursive=True))[-1]
        with gzip.open(path) as fh:
            events = json.load(fh)["traceEvents"]
    out = collections.Counter()
    for e in events:
        if e.get("ph") != "X" or e.get("args", {}).get("hlo_module") != module:
            continue
        op, op_name, calls = entry.get(e["name"], ("?", "", []))
        out[category(op, op_name, [o for c in calls for o in comps.get(c, [])])] += \
            e["dur"] / 1e3 / steps
    return dict(out), wall


def print_profile(name: str, prof: dict, wall: float) -> None:
    total = sum(prof.values())
    print(f"profile of the {name} step: {wall:.0f} ms wall per step, {total:.0f} ms summed")
    print("| category | ms/step | share |")
    print("|---|---|---|")
    for k, v in sorted(prof.items(), key=lambda kv: -kv[1]):
        print(f"| {k} | {v:.0f} | {v / total:.0%} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--example", default="mobilenetv2")
    p.add_argument("--widths", default="0.25,0.5")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--profile", action="store_true")
    p.add_argument("--bn", action="store_true", help="also the arm 'thinjax, fused BN'")
    a = p.parse_args()
    arms = list(ARMS)[:3 if a.bn else 2]
    print(f"{cpu_description()}; load average {os.getloadavg()}; jax {jax.__version__}; "
          f"convolutions: {conv.status()}", flush=True)
    fns, firsts = {}, {}
    for w in (float(v) for v in a.widths.split(",")):
        got, first = step_fns(a.example, w, a.batch, arms)
        fns.update({(w, k): f for k, f in got.items()})
        firsts.update({(w, k): v for k, v in first.items()})
    for f in fns.values():   # compiled by the first loss; one more warm step each
        f()
    rate, cpu = interleaved(fns, a.rounds, a.steps, a.batch)
    print(f"{a.example}, batch {a.batch}, the quick recipe's step; medians of {a.rounds} "
          f"interleaved rounds x {a.steps} steps")
    print("| width | arm | img/s | / xla arm (median, range) | img/CPU-s | / xla arm by CPU "
          "time (median, range) | first loss |")
    print("|---|---|---|---|---|---|---|")
    for w in sorted({w for w, _ in fns}):
        for k in arms:
            cells = []
            for by in (rate, cpu):
                t = by[(w, k)]
                r = [b / c for b, c in zip(t, by[(w, "xla")])]
                cells.append(f"{statistics.median(t):.1f} | {statistics.median(r):.2f}x "
                             f"({min(r):.2f}-{max(r):.2f})")
            print(f"| {w} | {k} | {' | '.join(cells)} | {firsts[(w, k)]:.6f} |", flush=True)
    if a.profile:
        for w in sorted({w for w, _ in fns}):
            for k in arms:
                print_profile(f"{a.example} w={w} {k}", *profile(fns[(w, k)], a.steps))
    print(f"load average {os.getloadavg()}")


if __name__ == "__main__":
    main()
