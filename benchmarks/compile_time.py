"""XLA:CPU compile time with and without XLA's YNN fusion flag, per network.

    python benchmarks/compile_time.py [--cases=resnet152_cifar:16:eval:32,...] [--timeout=600]

Each case compiles in a fresh process (so each sees its own XLA_FLAGS), once with XLA's
default path and once with `YNN_FLAG` in ``XLA_FLAGS`` (thinjax set it by default once,
later behind ``THINJAX_CPU_FLAGS=1``, and dropped it when it was no longer faster), and
prints the seconds of ``lower().compile()``:
the jitted eval forward (``train=False``, batch 2) or the gradient of a training forward
(BN in training mode, batch 8). A case that runs past --timeout is reported as such. One
session measured a ResNet-152 (CIFAR, w=16) compile of more than 5 minutes with it; this is
the check to rerun on another CPU or jaxlib.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

import jaxlib

import thinjax.commands  # noqa: F401  (tunes the process as the commands do: first)
from thinjax.cpu import cpu_description

YNN_FLAG = "--xla_cpu_experimental_ynn_fusion_type=dot,eltwise,reduce"

CASES = ("resnet152_cifar:16:eval:32", "resnet152_cifar:16:train:32", "resnet56:16:train:32",
         "resnet50:64:train:176")

CHILD = r"""
import functools, sys, time
import jax, jax.numpy as jnp
import thinjax
from thinjax.models.resnet import ResNet
from thinjax.plan import plan_from_width
name, width, mode, size = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
model = ResNet(plan_from_width(name, width))
x = jnp.zeros((2 if mode == "eval" else 8, size, size, 3), jnp.float32)
v = jax.eval_shape(model.init, jax.random.PRNGKey(0), x[:1])
if mode == "eval":
    f, args = jax.jit(functools.partial(model.apply, train=False)), (v, x)
else:
    def loss(p, bs):
        y, _ = model.apply({"params": p, "batch_stats": bs}, x, train=True,
                           mutable=["batch_stats"])
        return y.sum()
    f, args = jax.jit(jax.grad(loss)), (v["params"], v["batch_stats"])
t = time.perf_counter()
f.lower(*args).compile()
print(f"{time.perf_counter() - t:.1f}")
"""


def compile_seconds(case: str, flag_on: bool, timeout: float) -> str:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    if flag_on:
        env["XLA_FLAGS"] = YNN_FLAG
    try:
        r = subprocess.run([sys.executable, "-c", CHILD, *case.split(":")], env=env,
                           capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return f"> {timeout:.0f} (stopped)"
    if r.returncode:
        return f"failed: {r.stderr.strip().splitlines()[-1][:80]}"
    return r.stdout.split()[-1]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", default=",".join(CASES), help="name:width:eval|train:size,...")
    ap.add_argument("--timeout", type=float, default=600.0)
    a = ap.parse_args(argv)
    print(f"CPU: {cpu_description()}; jaxlib {jaxlib.__version__}; flag: {YNN_FLAG}")
    print("| network | width | function | input | compile s, default | compile s, flag on |")
    print("|---|---|---|---|---|---|")
    for case in a.cases.split(","):
        name, width, mode, size = case.split(":")
        off, on = (compile_seconds(case, f, a.timeout) for f in (False, True))
        print(f"| {name} | {width} | {mode} | {size} px | {off} | {on} |", flush=True)


if __name__ == "__main__":
    main()
