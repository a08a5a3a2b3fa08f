"""Depthwise convolutions on XLA:CPU: lax's grouped convolution vs thinjax.ops.depthwise.

    python benchmarks/depthwise.py --widths=0.25,0.5 --batch=128
    python benchmarks/depthwise.py --widths=0.5 --no-layers --rounds=3 --steps=2

Rows:
  layer   every distinct depthwise 3x3 of MobileNetV2 (CIFAR strides) at each width:
          (spatial size, channels, stride), seconds per forward and per forward+backward
          (gradients of the input and the kernel) at `--batch`, lax.conv_general_dilated
          (feature_group_count = channels) against `depthwise_conv`, and the largest
          difference of the outputs relative to the largest output
  network MobileNetV2 train steps (SGD momentum 0.9, cross-entropy, BatchNorm in training
          mode) in images/s, its depthwise layers as lax grouped convolutions ("lax", what
          nn.Conv does by default) against thinjax.ops.depthwise ("shifted", the model's
          own)
The two of each row alternate in `--rounds` rounds so that both see the same machine load;
medians are printed, with the CPU model and the load average.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from thinjax.cpu import cpu_description
from thinjax.models.examples import MobileNetV2
from thinjax.models.examples.common import scaled
from thinjax.models.examples.mobilenet_v2 import CIFAR_STRIDES, block_table
from thinjax.ops.depthwise import depthwise_conv

PAD = ((1, 1), (1, 1))


def dw_layers(width: float, size: int = 32) -> list[tuple[int, int, int]]:
    """Distinct (spatial size, channels, stride) of MobileNetV2's depthwise layers."""
    out, c_in = [], scaled(32, width)
    for c, t, s in block_table(width, CIFAR_STRIDES):
        out.append((size, c_in * t, s))
        size, c_in = (size + s - 1) // s, c
    return sorted(set(out), key=out.index)


def grouped(x, w, s):
    return lax.conv_general_dilated(x, w, (s, s), PAD, feature_group_count=x.shape[-1],
                                    dimension_numbers=("NHWC", "HWIO", "NHWC"))


def shifted(x, w, s):
    return depthwise_conv(x, w, (s, s), PAD)


def _seconds(f, *args) -> float:
    t = time.perf_counter()
    jax.block_until_ready(f(*args))
    return time.perf_counter() - t


def layer_rows(width: float, batch: int, rounds: int) -> None:
    for h, c, s in dw_layers(width):
        x = jax.random.normal(jax.random.key(0), (batch, h, h, c))
        w = jax.random.normal(jax.random.key(1), (3, 3, 1, c))
        fns = {}
        for name, f in (("lax", grouped), ("shifted", shifted)):
            g = jnp.ones((batch, (h + s - 1) // s, (h + s - 1) // s, c))
            fwd = jax.jit(lambda x, w, f=f, s=s: f(x, w, s))
            bwd = jax.jit(jax.grad(lambda x, w, f=f, s=s, g=g: jnp.vdot(f(x, w, s), g),
                                   (0, 1)))
            jax.block_until_ready((fwd(x, w), bwd(x, w)))
            fns[name] = (fwd, bwd)
        times = {k: ([], []) for k in fns}
        for _ in range(rounds):
            for k, (fwd, bwd) in fns.items():
                times[k][0].append(_seconds(fwd, x, w))
                times[k][1].append(_seconds(bwd, x, w))
        ref = np.asarray(fns["lax"][0](x, w))
        diff = np.abs(np.asarray(fns["shifted"][0](x, w)) - ref).max() / np.abs(ref).max()
        med = {k: [statistics.median(v) for v in t] for k, t in times.items()}
        print(f"layer w={width} {h}x{h} C={c} s={s}: fwd lax {med['lax'][0]:.4f}s "
              f"shifted {med['shifted'][0]:.4f}s ({med['lax'][0] / med['shifted'][0]:.1f}x)"
              f" | fwd+bwd lax {med['lax'][1]:.4f}s shifted {med['shifted'][1]:.4f}s "
              f"({med['lax'][1] / med['shifted'][1]:.1f}x) | rel diff {diff:.1e}", flush=True)


def _as_lax(next_fun, args, kwargs, ctx):
    """Interceptor: a depthwise nn.Conv computed by lax (nn.Conv's default)."""
    mod = ctx.module
    if (isinstance(mod, nn.Conv) and ctx.method_name == "__call__"
            and mod.conv_general_dilated is not None):
        return mod.clone(parent=mod.scope, conv_general_dilated=None)(*args, **kwargs)
    return next_fun(*args, **kwargs)


def train_step(model: nn.Module, tx, use_lax: bool):
    def loss(params, stats, x, y):
        def run():
            return model.apply({"params": params, "batch_stats": stats}, x, train=True,
                               mutable=["batch_stats"])
        if use_lax:
            with nn.intercept_methods(_as_lax):
                logits, new = run()
        else:
            logits, new = run()
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), new

    @jax.jit
    def step(params, stats, opt, x, y):
        (val, new), g = jax.value_and_grad(loss, has_aux=True)(params, stats, x, y)
        upd, opt = tx.update(g, opt, params)
        return optax.apply_updates(params, upd), new["batch_stats"], opt, val
    return step


def network_rows(width: float, batch: int, rounds: int, steps: int) -> None:
    model = MobileNetV2(width=width)
    x = jax.random.normal(jax.random.key(0), (batch, 32, 32, 3))
    y = jax.random.randint(jax.random.key(1), (batch,), 0, 10)
    v = model.init(jax.random.key(2), x[:1])
    tx = optax.sgd(0.01, momentum=0.9)
    state = {k: (v["params"], v["batch_stats"], tx.init(v["params"])) for k in ("lax",
                                                                               "shifted")}
    steps_fn = {k: train_step(model, tx, k == "lax") for k in state}
    losses = {}
    for k, f in steps_fn.items():   # compile, and the first step's loss of each
        losses[k] = float(f(*state[k], x, y)[3])
    rate = {k: [] for k in state}
    for _ in range(rounds):
        for k, f in steps_fn.items():
            t = time.perf_counter()
            for _ in range(steps):
                *state[k], val = f(*state[k], x, y)
            jax.block_until_ready(val)
            rate[k].append(steps * batch / (time.perf_counter() - t))
    med = {k: statistics.median(r) for k, r in rate.items()}
    print(f"network MobileNetV2 w={width} batch {batch}: lax {med['lax']:.1f} img/s, "
          f"shifted {med['shifted']:.1f} img/s ({med['shifted'] / med['lax']:.1f}x); "
          f"first loss lax {losses['lax']:.6f} shifted {losses['shifted']:.6f}", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--widths", default="0.25,0.5")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--no-layers", action="store_true")
    p.add_argument("--no-network", action="store_true")
    a = p.parse_args()
    print(f"{cpu_description()}; load average {os.getloadavg()}; jax {jax.__version__}")
    for w in (float(s) for s in a.widths.split(",")):
        if not a.no_layers:
            layer_rows(w, a.batch, a.rounds)
        if not a.no_network:
            network_rows(w, a.batch, a.rounds, a.steps)
    print(f"load average {os.getloadavg()}")


if __name__ == "__main__":
    main()
