"""Train and eval throughput: plain jit step vs thinjax's full loop, pipeline, FLOP/s.

    python benchmarks/train_throughput.py --model=resnet18_cifar --width=16 --batch=128
    python benchmarks/train_throughput.py --model=resnet50 --width=64 --input-size=224 \
        --batch=128 --steps=4 --dtype=bfloat16
    XLA_FLAGS=--xla_force_host_platform_device_count=8 python benchmarks/train_throughput.py ...

Rows (images/s):
  plain step   an unsharded jax.jit SGD step (cross-entropy, no EMA/mixing) on device data
  full loop    thinjax.train.loop.train_and_evaluate with the study's recipe (tf.data
               pipeline with TrivialAugment and random erasing, mixup/cutmix, label
               smoothing, EMA, logging, sharding over all devices), warm windows only
  pipeline     the tf.data training pipeline alone
  eval         the jit evaluation step on device data
FLOP/s counts 3 x 2 x MACs per training image (forward + backward ~ 3 forwards) and
2 x MACs per evaluated image; "peak" is a measured large matmul in the same dtype.
Data: the bundled CIFAR-10 sample (real JPEGs; resized crops for 224-pixel models).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax


def timeit(fn, n: int) -> float:
    """Seconds per call of fn (which must block), after one warm-up call."""
    fn()
    t = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t) / n


def matmul_peak(dtype, n: int) -> float:
    a = jnp.ones((n, n), dtype)
    f = jax.jit(lambda a: a @ a)
    sec = timeit(lambda: f(a).block_until_ready(), 5)
    return 2 * n**3 / sec


def plain_step_rate(model, batch: int, size: int, steps: int, num_classes: int) -> float:
    x = jnp.asarray(np.random.default_rng(0).standard_normal((batch, size, size, 3)),
                    jnp.float32)
    y = jnp.asarray(np.arange(batch) % num_classes)
    v = jax.jit(model.init)(jax.random.PRNGKey(0), x[:1])
    tx = optax.sgd(0.1, momentum=0.9)
    opt = tx.init(v["params"])

    @jax.jit
    def step(params, bs, opt, x, y):
        def loss(p):
            logits, upd = model.apply({"params": p, "batch_stats": bs}, x, train=True,
                                      mutable=["batch_stats"])
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), upd
        (l, upd), g = jax.value_and_grad(loss, has_aux=True)(params)
        u, opt = tx.update(g, opt, params)
        return optax.apply_updates(params, u), upd["batch_stats"], opt, l

    state = [v["params"], v["batch_stats"], opt]

    def run():
        p, b, o, l = step(*state, x, y)
        state[:] = [p, b, o]
        l.block_until_ready()

    return batch / timeit(run, steps)


def eval_rate(model, batch: int, size: int, steps: int) -> float:
    from thinjax.evaluation import eval_step
    x = jnp.asarray(np.random.default_rng(0).standard_normal((batch, size, size, 3)),
                    jnp.float32)
    b = {"image": x, "label": jnp.zeros((batch,), jnp.int32), "mask": jnp.ones((batch,), bool)}
    v = jax.jit(model.init)(jax.random.PRNGKey(0), x[:1])
    return batch / timeit(lambda: jax.block_until_ready(eval_step(v, b, model=model)), steps)


def recipe_config(a, tiny_steps: int):
    from thinjax.config import base_config
    c = base_config()
    c.model.name, c.model.width, c.model.dtype = a.model, a.width, a.dtype
    c.model.num_classes = 10
    c.data.name = "sample:cifar10"
    c.data.image_size = a.input_size
    if a.input_size != 32:
        c.data.augment, c.data.cache = "imagenet", "encoded"
    c.train.batch_size = a.batch
    c.train.total_steps = tiny_steps
    c.train.log_every = a.steps
    c.train.eval_every_epochs = 1e9
    c.train.checkpoint_every = 10**9
    c.train.keep_best = False
    c.optim.lr_batch = 1024
    return c


def pipeline_rate(cfg, batches: int) -> float:
    from thinjax.data import get_source
    from thinjax.data.pipeline import train_batches
    src = get_source(cfg.data.name)
    spe = src.num_examples("train") // cfg.train.batch_size
    it = train_batches(src, cfg.data, cfg.train.batch_size, 0, 0, spe)
    next(it)
    t = time.perf_counter()
    for _ in range(batches):
        next(it)
    return batches * cfg.train.batch_size / (time.perf_counter() - t)


def full_loop_rate(a, plan, model) -> float:
    from thinjax.train.loop import train_and_evaluate
    windows = 3
    cfg = recipe_config(a, tiny_steps=a.steps * (windows + 1))
    with tempfile.TemporaryDirectory() as wd:
        train_and_evaluate(cfg, wd, model, plan)
        rates = [json.loads(l)["images_per_s"] for l in open(os.path.join(wd, "metrics.jsonl"))]
    return float(np.median(rates[1:]))  # the first window holds compilation


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="resnet18_cifar")
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--input-size", type=int, default=32)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=10, help="timed steps per measurement")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--skip-loop", action="store_true")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    from thinjax.cost import count
    from thinjax.models.resnet import build_model
    from thinjax.plan import plan_from_width
    plan = plan_from_width(a.model, a.width, 10)
    model = build_model(plan, dtype=a.dtype)
    macs = count(plan, a.input_size).macs
    dtype = jnp.bfloat16 if a.dtype == "bfloat16" else jnp.float32
    peak = matmul_peak(dtype, 4096 if jax.default_backend() != "cpu" else 2048)
    rows = {"plain step": plain_step_rate(model, a.batch, a.input_size, a.steps, 10)}
    if not a.skip_loop:
        rows["full loop"] = full_loop_rate(a, plan, model)
        rows["pipeline"] = pipeline_rate(recipe_config(a, 1), a.steps * 2)
    rows["eval"] = eval_rate(model, a.batch, a.input_size, a.steps)
    dev = f"{jax.device_count()} x {jax.devices()[0].device_kind} ({jax.default_backend()})"
    print(f"\n{a.model} w={a.width} at {a.input_size}px, batch {a.batch}, {a.dtype}, {dev}; "
          f"{macs / 1e6:.1f} M MACs/image; matmul peak {peak / 1e9:.1f} GFLOP/s")
    print("| what | images/s | GFLOP/s | of peak |")
    print("|---|---|---|---|")
    out = {}
    for k, r in rows.items():
        flops = r * macs * (2 if k == "eval" else 6) if k != "pipeline" else float("nan")
        print(f"| {k} | {r:,.0f} | {flops / 1e9:,.1f} | {flops / peak:.1%} |")
        out[k] = {"images_per_s": r, "flops": flops}
    if "full loop" in rows:
        print(f"full loop / plain step: {rows['full loop'] / rows['plain step']:.1%}")
    if a.json:
        print(json.dumps({"model": a.model, "width": a.width, "input_size": a.input_size,
                          "batch": a.batch, "dtype": a.dtype, "devices": dev,
                          "peak_flops": peak, "rows": out}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
