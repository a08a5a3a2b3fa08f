"""Accelerator benchmark: one table, about 8 minutes on one H100 or H200.

    bash benchmarks/accelerator.sh            # = python benchmarks/accelerator.py
    python benchmarks/accelerator.py --smoke  # tiny sizes: checks the script on a CPU

Rows:
  matmul peak     a bf16 8192^3 matrix product (the "peak" the MFU column divides by)
  R50 train       ResNet-50 (w=64, 224 px, bf16 compute, f32 params) thinjax train step
                  (SGD + weight decay, label smoothing, mixup/cutmix, EMA) on device data,
                  at the largest batch of --r50-batches that fits
  R18c train      ThinResNet-18 with the CIFAR stem, w=64, 32 px, bf16, same step
  R50 eval        eval forward of dense ResNet-50 vs the L1-global pruned one at 50% MACs
                  materialised (round_to 1 and 8) vs the regular ThinResNet-50 of the same
                  MACs (masked-dense too)
  R56 eval        benchmarks/pruned_speed.py's CIFAR ResNet-56 w=16 table at batch 1024
MFU = 2 x MACs x (3 for training, 1 for eval) x images/s / matmul peak. Data is synthetic
and device-resident: the input pipeline (tf.data on the host) is not part of these rows.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import thinjax.commands  # noqa: E402,F401  (tunes the process as the commands do: first)
from thinjax.cost import count  # noqa: E402
from thinjax.models.resnet import ResNet, random_variables  # noqa: E402
from thinjax.plan import plan_from_width  # noqa: E402
from thinjax.train.state import TrainState  # noqa: E402
from thinjax.train.step import StepConfig, train_step  # noqa: E402

ROWS: list[dict] = []


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def bench(fn, seconds: float = 3.0) -> float:
    """Seconds per call (fn must block), after a warm-up call; best of 3 windows."""
    fn()
    t = time.perf_counter()
    fn()
    n = max(1, int(seconds / 3 / max(time.perf_counter() - t, 1e-6)))
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter() - t) / n)
    return best


def matmul_peak(n: int) -> float:
    k1, k2 = jax.random.split(jax.random.PRNGKey(0))
    a = jax.random.normal(k1, (n, n), jnp.bfloat16)
    b = jax.random.normal(k2, (n, n), jnp.bfloat16)
    f = jax.jit(lambda a, b: a @ b)
    return 2 * n**3 / bench(lambda: f(a, b).block_until_ready())


def train_rate(plan, batch: int, size: int, dtype) -> float:
    model = ResNet(plan, dtype=dtype)
    v = random_variables(plan, 0)
    tx = optax.chain(optax.add_decayed_weights(2e-5), optax.sgd(0.1, momentum=0.9))
    st = TrainState(step=jnp.zeros((), jnp.int32), params=v["params"],
                    batch_stats=v["batch_stats"], opt_state=tx.init(v["params"]),
                    ema_params=v["params"], ema_batch_stats=v["batch_stats"],
                    rng=jax.random.key_data(jax.random.PRNGKey(0)), masks={})
    st = jax.device_put(st)
    cfg = StepConfig(num_classes=plan.num_classes, label_smoothing=0.1, mixup_alpha=0.2,
                     cutmix_alpha=1.0, ema_decay=0.9999, ema_every=32)
    step = jax.jit(functools.partial(train_step, model=model, tx=tx,
                                     schedule=optax.constant_schedule(0.1), cfg=cfg),
                   donate_argnums=0)
    r = np.random.default_rng(0)
    batch_ = jax.device_put({
        "image": jnp.asarray(r.standard_normal((batch, size, size, 3)), jnp.float32),
        "label": jnp.asarray(r.integers(0, plan.num_classes, batch), jnp.int32)})
    box = {"st": st}

    def one():
        box["st"], m = step(box["st"], batch_)
        m["loss"].block_until_ready()

    return batch / bench(one)


def add(section, name, plan, size, ips, kind, peak, note=""):
    macs = count(plan, size).macs
    mfu = 2 * macs * (3 if kind == "train" else 1) * ips / peak if peak else float("nan")
    ROWS.append({"section": section, "name": name, "macs": macs,
                 "params": count(plan, size).params, "images_per_s": ips, "mfu": mfu,
                 "note": note})
    log(f"{section:10s} {name:28s} {macs / 1e9:7.3f} GMACs {ips:10.0f} img/s  MFU "
        f"{100 * mfu:5.1f}%  {note}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="tiny sizes (a CPU check)")
    ap.add_argument("--r50-batches", default="1024,512,256")
    ap.add_argument("--json", default=None, help="also write the rows to this JSON file")
    ap.add_argument("--skip", default="", help="comma list of sections to skip")
    a = ap.parse_args(argv)
    skip = set(a.skip.split(","))
    bf16 = jnp.bfloat16
    dev = jax.devices()[0]
    log(f"device: {dev.platform} {dev.device_kind}, jax {jax.__version__}")
    smoke = a.smoke
    peak = matmul_peak(512 if smoke else 8192)
    ROWS.append({"section": "peak", "name": "bf16 matmul", "flops_per_s": peak})
    log(f"bf16 matmul peak: {peak / 1e12:.1f} TFLOP/s")

    r50 = plan_from_width("resnet50", 8 if smoke else 64)
    size = 64 if smoke else 224
    if "r50train" not in skip:
        try:
            for b in ([8] if smoke else [int(x) for x in a.r50_batches.split(",")]):
                try:
                    t = time.perf_counter()
                    ips = train_rate(r50, b, size, bf16)
                    add("R50 train", f"ResNet-50 w=64 batch {b}", r50, size, ips, "train", peak,
                        f"incl. compile {time.perf_counter() - t:.0f}s")
                    break
                except Exception as e:  # out of memory: the next smaller batch
                    if "RESOURCE_EXHAUSTED" not in str(e) and "out of memory" not in str(e).lower():
                        raise
                    log(f"batch {b} does not fit: {str(e)[:120]}")
        except Exception as e:  # report, go on with the next section
            log(f"section r50train failed: {type(e).__name__}: {str(e)[:300]}")
        dump(a.json, dev)
    if "r18train" not in skip:
        try:
            r18 = plan_from_width("resnet18_cifar", 8 if smoke else 64)
            b = 16 if smoke else 1024
            add("R18c train", f"ThinResNet-18 cifar w=64 b{b}", r18, 32,
                train_rate(r18, b, 32, bf16), "train", peak)
        except Exception as e:  # report, go on with the next section
            log(f"section r18train failed: {type(e).__name__}: {str(e)[:300]}")
        dump(a.json, dev)
    if "r50eval" not in skip:
        try:
            from pruned_speed import images_per_s, thin_of_equal_macs

            from thinjax.prune.allocate import Target, allocate
            from thinjax.prune.criteria import ScoreInputs, score_groups
            from thinjax.prune.materialize import materialize
            b = 8 if smoke else 1024
            v = random_variables(r50, 0)
            add("R50 eval", f"dense b{b}", r50, size, images_per_s(r50, v, b, size, bf16),
                "eval", peak)
            scores = score_groups(ScoreInputs(r50, v), "l1")
            w, thin = thin_of_equal_macs("resnet50", 0.5 * count(r50, size).macs, size,
                                         r50.stem_width, None)
            add("R50 eval", f"thin w={w} (equal MACs)", thin, size,
                images_per_s(thin, random_variables(thin, 1), b, size, bf16), "eval", peak)
            for rt in ((1, 2) if smoke else (1, 8)):
                al = allocate(r50, scores, Target("macs_fraction", 0.5), round_to=rt,
                              input_size=size)
                if rt == 1:
                    add("R50 eval", "masked-dense 50%", r50, size,
                        images_per_s(r50, v, b, size, bf16, masks=al.masks), "eval", peak,
                        "counts the dense MACs")
                small, sv = materialize(r50, al.masks, v)
                add("R50 eval", f"materialised 50% round_to={rt}", small, size,
                    images_per_s(small, sv, b, size, bf16), "eval", peak)
        except Exception as e:  # report, go on with the next section
            log(f"section r50eval failed: {type(e).__name__}: {str(e)[:300]}")
        dump(a.json, dev)
    if "r56" not in skip:
        try:
            import pruned_speed
            ck = os.path.join(ROOT, ".devcarry", "resnet56_width16_cifar10_ema.pt")
            args = ["--batch", "16" if smoke else "1024", "--fractions", "0.5,0.25"]
            if os.path.isfile(ck):
                args += ["--checkpoint", ck]
            pruned_speed.main(args)
        except Exception as e:  # report, go on with the next section
            log(f"section r56 failed: {type(e).__name__}: {str(e)[:300]}")
        dump(a.json, dev)
    dump(a.json, dev)


def dump(path, dev) -> None:
    if path:
        with open(path, "w") as f:
            json.dump({"device": dev.device_kind, "rows": ROWS}, f, indent=1)


if __name__ == "__main__":
    main()
