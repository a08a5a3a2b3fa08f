"""Train and eval throughput: plain jit step vs thinjax's full loop, pipeline, FLOP/s.

    python benchmarks/train_throughput.py --model=resnet18_cifar --width=16 --batch=128
    python benchmarks/train_throughput.py --model=resnet50 --width=64 --input-size=224 \
        --batch=128 --steps=4 --dtype=bfloat16
    XLA_FLAGS=--xla_force_host_platform_device_count=8 python benchmarks/train_throughput.py ...
    python benchmarks/train_throughput.py --model=resnet20 --width=8 --compare-torch
    python benchmarks/train_throughput.py --model=resnet56 --width=16 --compare-torch --pruned
    python benchmarks/train_throughput.py --model=resnet56 --width=16 --compare-torch \
        --dtype=float32,bfloat16      # bfloat16 against PyTorch's autocast, channels_last
    python benchmarks/train_throughput.py --check-numerics --dtype=bfloat16 --model=resnet20 \
        --width=8 --batch=32          # bfloat16 steps against the float32 reference
    XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=dot,eltwise,reduce python ...  # YNN

Rows (images/s):
  plain step   an unsharded jax.jit SGD step (momentum 0.9, cross-entropy with label
               smoothing 0.1, BN in training mode, no EMA/mixing) on device data
  full loop    thinjax.train.loop.train_and_evaluate with the study's recipe (tf.data
               pipeline with TrivialAugment and random erasing, mixup/cutmix, label
               smoothing, EMA, logging, sharding over all devices), warm windows only
  pipeline     the tf.data training pipeline alone
  eval         the jit evaluation step on device data
FLOP/s counts 3 x 2 x MACs per training image (forward + backward ~ 3 forwards) and
2 x MACs per evaluated image; "peak" is a measured large matmul in the same dtype.
--compare-torch times only the plain step and the eval step, and the same two in PyTorch
(thinjax.interop.torch_module.TorchResNet from the same plan, NCHW float32, torch.optim.SGD,
CrossEntropyLoss(label_smoothing=0.1), inference_mode for eval; for --dtype=bfloat16 the
model and batch channels_last under torch.autocast("cpu", dtype=torch.bfloat16), thinjax
with bfloat16 compute and float32 parameters), alternating the two in
--rounds rounds of --steps steps so both see the same machine load; it prints medians and
the median of the per-round thinjax/PyTorch ratios, with the CPU model and ISA flags, and
the same ratio by process CPU time (pinned to one core, e.g. with taskset -c 0, that is the
speed ratio with other processes' turns on the core left out; on several cores it counts
the work of all threads, spinning included).
Data: the bundled CIFAR-10 sample (real JPEGs; resized crops for 224-pixel models).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import thinjax.commands  # noqa: F401  (tunes the process as the commands do: first)
from thinjax.allocator import malloc_status
from thinjax.cpu import cpu_description
from thinjax.ops.conv import status as conv_status
from thinjax.plan import ARCHS, Plan, plan_from_width


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


def plain_step(model, batch: int, size: int, num_classes: int, smoothing: float = 0.1):
    """One unsharded jit SGD step (momentum 0.9, cross-entropy with label smoothing, BN in
    training mode) on device data: a callable that runs one step and blocks."""
    x = jnp.asarray(np.random.default_rng(0).standard_normal((batch, size, size, 3)),
                    jnp.float32)
    y = jax.nn.one_hot(jnp.asarray(np.arange(batch) % num_classes), num_classes)
    y = optax.smooth_labels(y, smoothing)
    v = jax.jit(model.init)(jax.random.PRNGKey(0), x[:1])
    tx = optax.sgd(0.1, momentum=0.9)
    opt = tx.init(v["params"])

    @jax.jit
    def step(params, bs, opt, x, y):
        def loss(p):
            logits, upd = model.apply({"params": p, "batch_stats": bs}, x, train=True,
                                      mutable=["batch_stats"])
            return optax.softmax_cross_entropy(logits, y).mean(), upd
        (l, upd), g = jax.value_and_grad(loss, has_aux=True)(params)
        u, opt = tx.update(g, opt, params)
        return optax.apply_updates(params, u), upd["batch_stats"], opt, l

    state = [v["params"], v["batch_stats"], opt]

    def run():
        p, b, o, l = step(*state, x, y)
        state[:] = [p, b, o]
        l.block_until_ready()

    run.hlo_text = lambda: step.lower(*state, x, y).compile().as_text()
    return run


def plain_step_rate(model, batch: int, size: int, steps: int, num_classes: int) -> float:
    return batch / timeit(plain_step(model, batch, size, num_classes), steps)


def eval_fn(model, batch: int, size: int):
    """The jit evaluation step (thinjax.evaluation.eval_step) on device data: a callable."""
    from thinjax.evaluation import eval_step
    x = jnp.asarray(np.random.default_rng(0).standard_normal((batch, size, size, 3)),
                    jnp.float32)
    b = {"image": x, "label": jnp.zeros((batch,), jnp.int32), "mask": jnp.ones((batch,), bool)}
    v = jax.jit(model.init)(jax.random.PRNGKey(0), x[:1])
    return lambda: jax.block_until_ready(eval_step(v, b, model=model))


def eval_rate(model, batch: int, size: int, steps: int) -> float:
    return batch / timeit(eval_fn(model, batch, size), steps)


def torch_setup(plan, batch: int, size: int, dtype: str, train: bool):
    """(TorchResNet from `plan` in train or eval mode, random NCHW batch, autocast context
    factory). float32: NCHW, no autocast; bfloat16: channels_last model and batch under
    torch.autocast("cpu", dtype=torch.bfloat16), what a PyTorch user runs for bf16."""
    import functools

    import torch

    from thinjax.interop.torch_module import TorchResNet
    torch.manual_seed(0)
    model = TorchResNet(plan).train(train)
    x = torch.randn(batch, 3, size, size)
    bf16 = dtype == "bfloat16"
    if bf16:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    return model, x, functools.partial(torch.autocast, "cpu", dtype=torch.bfloat16,
                                       enabled=bf16)


def torch_step(plan, batch: int, size: int, smoothing: float = 0.1, dtype: str = "float32"):
    """The same training step in PyTorch (TorchResNet from the same plan, SGD momentum 0.9,
    cross-entropy with label smoothing, BN in training mode; float32 NCHW, or bfloat16
    autocast with channels_last, see torch_setup): a callable."""
    import torch
    model, x, autocast = torch_setup(plan, batch, size, dtype, train=True)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    crit = torch.nn.CrossEntropyLoss(label_smoothing=smoothing)
    y = torch.arange(batch) % plan.num_classes

    def run():
        opt.zero_grad(set_to_none=True)
        with autocast():
            loss = crit(model(x), y)
        loss.backward()
        opt.step()
        loss.item()

    return run


def torch_eval(plan, batch: int, size: int, dtype: str = "float32"):
    """PyTorch's evaluation forward (eval mode, inference_mode) on the same plan."""
    import torch
    model, x, autocast = torch_setup(plan, batch, size, dtype, train=False)

    def run():
        with torch.inference_mode(), autocast():
            model(x).argmax(1).sum().item()

    return run


def interleaved(fns: dict, steps: int, rounds: int, faults: dict | None = None,
                cpu: dict | None = None) -> dict[str, list[float]]:
    """Seconds per call of each callable, timed in turn, `rounds` times: on a shared machine
    the load drifts, and a ratio within one round sees the same load on both sides. If
    `faults` is a dict, it receives each callable's minor page faults per call (median);
    if `cpu` is, each round's process CPU seconds per call (on one core, the work's cost
    even while other processes take turns on the core)."""
    for f in fns.values():
        f(), f()  # compile / warm up
    out, flt, sec = {k: [] for k in fns}, {k: [] for k in fns}, {k: [] for k in fns}
    for _ in range(rounds):
        for k, f in fns.items():
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            c = time.process_time()
            out[k].append(timeit(f, steps))
            sec[k].append((time.process_time() - c) / (steps + 1))
            flt[k].append((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
                          / (steps + 1))  # timeit calls f once more, to warm up
    if faults is not None:
        faults.update({k: float(np.median(v)) for k, v in flt.items()})
    if cpu is not None:
        cpu.update(sec)
    return out


def pruned_plan(plan: Plan, seed: int = 0) -> Plan:
    """`plan` with irregular widths as a pruning run leaves them: every stream and inner
    width scaled by 0.45-0.85 and moved off multiples of 8."""
    rng = np.random.default_rng(seed)

    def odd(w: int) -> int:
        c = max(3, int(round(w * rng.uniform(0.45, 0.85))))
        return c + 1 if c % 8 == 0 else c

    stems = [odd(s.width) for s in plan.stages]
    stages = tuple(dataclasses.replace(s, width=w, blocks=tuple(
        dataclasses.replace(b, inner=tuple(odd(c) for c in b.inner)) for b in s.blocks))
        for s, w in zip(plan.stages, stems))
    return dataclasses.replace(plan, stem_width=stems[0], stages=stages)


def compare_torch(a, plan: Plan) -> dict:
    """thinjax vs PyTorch on the same plan, batch and step, interleaved; medians. For each
    of --dtype's dtypes: thinjax in that compute dtype against PyTorch in it (bfloat16:
    autocast + channels_last). When thinjax's convolutions are oneDNN's, the step with XLA's
    convolutions is timed too. With --ablate, thinjax without the fusion barrier, and
    without it and with flax's nn.BatchNorm (the path before either change), too."""
    import torch

    from thinjax.models.resnet import build_model
    fns: dict = {"train": {}, "eval": {}}
    rows = []  # (dtype, variant)
    for dt in a.dtypes:
        model = build_model(plan, dtype=dt)
        variants = {"thinjax": model}
        if conv_status(dt).startswith("onednn"):  # the same step with XLA's convolutions
            variants["XLA conv"] = model.clone(conv_impl="xla")
        if a.ablate:
            variants["no fusion barrier"] = model.clone(fusion_barrier=False)
            variants["no barrier, nn.BatchNorm"] = model.clone(fusion_barrier=False,
                                                               fused_bn=False)
        for k, m in variants.items():
            fns["train"][f"{dt} {k}"] = plain_step(m, a.batch, a.input_size, plan.num_classes)
            fns["eval"][f"{dt} {k}"] = eval_fn(m, a.batch, a.input_size)
            rows.append((dt, k))
        fns["train"][f"{dt} pytorch"] = torch_step(plan, a.batch, a.input_size, dtype=dt)
        fns["eval"][f"{dt} pytorch"] = torch_eval(plan, a.batch, a.input_size, dtype=dt)
    res = {"rows": rows, "conv": {dt: conv_status(dt) for dt in a.dtypes}}
    for what, group in fns.items():
        faults, cpu = {}, {}
        sec = interleaved(group, a.steps, a.rounds, faults, cpu)
        res[what] = {k: a.batch / float(np.median(v)) for k, v in sec.items()}
        res[what]["faults"] = faults
        for dt, k in rows:
            ratios = [t / j for j, t in zip(sec[f"{dt} {k}"], sec[f"{dt} pytorch"])]
            res[what][f"{dt} {k} ratio"] = float(np.median(ratios))
            res[what][f"{dt} {k} ratio_range"] = (min(ratios), max(ratios))
            res[what][f"{dt} {k} cpu ratio"] = float(np.median(
                [t / j for j, t in zip(cpu[f"{dt} {k}"], cpu[f"{dt} pytorch"])]))
    res["torch_threads"] = torch.get_num_threads()
    return res


def print_compare(a, plan: Plan, res: dict) -> None:
    flags = os.environ.get("XLA_FLAGS", "") or "(none)"
    print(f"\n{a.model} w={a.width}{' pruned ' + plan.describe() if a.pruned else ''}, "
          f"{a.input_size}px, batch {a.batch}, {', '.join(a.dtypes)}; "
          f"CPU: {cpu_description()}")
    print(f"jax {jax.__version__}, XLA_FLAGS {flags}; malloc tuning {malloc_status()} (both "
          f"libraries, one process); torch threads {res['torch_threads']}; "
          f"medians of {a.rounds} interleaved rounds x {a.steps} steps; PyTorch bfloat16: "
          "autocast + channels_last")
    for dt, st in res["conv"].items():
        print(f"thinjax convolutions, {dt}: {st}")
    print("| step | dtype | variant | thinjax img/s | PyTorch img/s | thinjax/PyTorch (median, "
          "range) | by CPU time | page faults per step, thinjax / PyTorch |")
    print("|---|---|---|---|---|---|---|---|")
    for what in ("train", "eval"):
        r = res[what]
        for dt, k in res["rows"]:
            key, pt = f"{dt} {k}", f"{dt} pytorch"
            lo, hi = r[f"{key} ratio_range"]
            print(f"| {what} | {dt} | {k} | {r[key]:,.0f} | {r[pt]:,.0f} | "
                  f"{r[f'{key} ratio']:.2f}x ({lo:.2f}-{hi:.2f}) | {r[f'{key} cpu ratio']:.2f}x | "
                  f"{r['faults'][key]:,.0f} / {r['faults'][pt]:,.0f} |")


def perturbed(xs: np.ndarray, how: str | None) -> np.ndarray:
    """`xs` moved by one ulp of float32 or bfloat16 (`how`): ``DTYPE``: scaled by 1 + 2^-23
    or 1 + 2^-7; ``DTYPE:SEED``: each value one ulp up or down at random (seeded; train-mode
    BatchNorm divides a uniform scale out: 1 + 2^-7 left the first step's gradient within
    1e-6 of the reference's, against 0.23-0.26 relative for this)."""
    if not how:
        return xs
    dtype, _, seed = how.partition(":")
    if not seed:  # uniform: scaled by 1 + epsilon
        return xs * np.float32(1 + (2**-23 if dtype == "float32" else 2**-7))
    _, e = np.frexp(xs)  # |x| = m 2^e, m in [0.5, 1): one ulp is 2^(e - 1 - mantissa bits)
    bits = 23 if dtype == "float32" else 7
    sign = np.random.default_rng(int(seed)).choice(np.float32([-1, 1]), xs.shape)
    return (xs + sign * np.ldexp(np.float32(1), e - 1 - bits)).astype(np.float32)


def numerics_dump(a, path: str) -> None:
    """`a.check_steps` training steps of the plain step on a fixed stream of random images
    and labels (memorised, so the loss falls); saves the loss curve, the first step's
    gradient and eval-mode logits at init and at the end to `path` (.npz), computing in
    --dtype. --perturb moves the inputs by one ulp (`perturbed`): how far rounding alone
    moves the curve; --reference-model uses nn.BatchNorm and no fusion barrier."""
    from thinjax.models.resnet import build_model
    plan = plan_from_width(a.model, a.width, 10)
    ref = a.reference_model
    model = build_model(plan, fused_bn=not ref, fusion_barrier=not ref, dtype=a.dtype)
    rng = np.random.default_rng(0)
    xs = rng.standard_normal((4, a.batch, 32, 32, 3)).astype(np.float32)
    xs = perturbed(xs, a.perturb)
    ys = jax.nn.one_hot(rng.integers(0, 10, (4, a.batch)), 10)
    v = jax.jit(model.init)(jax.random.PRNGKey(0), xs[0, :1])
    tx = optax.sgd(0.05, momentum=0.9)

    @jax.jit
    def step(params, bs, opt, x, y):
        def loss(p):
            logits, upd = model.apply({"params": p, "batch_stats": bs}, x, train=True,
                                      mutable=["batch_stats"])
            return optax.softmax_cross_entropy(logits, optax.smooth_labels(y, 0.1)).mean(), upd
        (l, upd), g = jax.value_and_grad(loss, has_aux=True)(params)
        u, opt = tx.update(g, opt, params)
        return optax.apply_updates(params, u), upd["batch_stats"], opt, l, g

    logits = jax.jit(lambda v, x: model.apply(v, x, train=False))
    first = np.asarray(logits(v, xs[0]))
    p, bs, opt, losses, grads = v["params"], v["batch_stats"], tx.init(v["params"]), [], []
    for i in range(a.check_steps):
        p, bs, opt, l, g = step(p, bs, opt, xs[i % 4], ys[i % 4])
        losses.append(float(l))
        grads += [np.concatenate([np.ravel(t) for t in jax.tree.leaves(g)])] if i == 0 else []
    last = np.asarray(logits({"params": p, "batch_stats": bs}, xs[0]))
    np.savez(path, losses=np.array(losses), first=first, last=last, grad=grads[0])


XLA_CONV = {"THINJAX_CONV": "xla"}
YNN = {"XLA_FLAGS": "--xla_cpu_experimental_ynn_fusion_type=dot,eltwise,reduce"}
NUMERICS_ARMS = {  # name -> (environment, extra arguments)
    "thinjax default (oneDNN conv, barrier, fused BN)": ({}, []),
    "thinjax, XLA conv, flag off": ({**XLA_CONV}, []),
    "thinjax, XLA conv, flag on": ({**YNN, **XLA_CONV}, []),
    "reference": ({**XLA_CONV}, ["--reference-model"]),
    "reference, inputs +1 ulp": ({**XLA_CONV}, ["--reference-model", "--perturb=float32"]),
}
BF16 = ["--dtype=bfloat16"]
BF16_ONEDNN = "thinjax bfloat16 (oneDNN conv, barrier, fused BN)"
BF16_BAND = "reference, inputs moved one bfloat16 ulp"  # the band: the largest of these arms
NUMERICS_ARMS_BF16 = {  # --check-numerics --dtype=bfloat16: bfloat16 against float32
    BF16_ONEDNN: ({}, BF16),
    "thinjax bfloat16, XLA conv": ({**XLA_CONV}, BF16),
    "reference": ({**XLA_CONV}, ["--reference-model"]),
    # eval-mode logits feel a uniform change; train-mode BatchNorm divides it out
    f"{BF16_BAND}: x (1 + 2^-7)": ({**XLA_CONV}, ["--reference-model", "--perturb=bfloat16"]),
    f"{BF16_BAND}: +-1 ulp at random": ({**XLA_CONV}, ["--reference-model",
                                                        "--perturb=bfloat16:1"]),
}
# how far thinjax's bfloat16 step may be from the float32 reference, in bands: bfloat16
# rounds every activation, not only the input; measured (ResNet-20 w=8, batch 32, AMD
# EPYC): 1.01x the band for the init logits, 0.97x for the first-step gradient
BF16_BAND_FACTOR = 1.5


def numerics_arms(a, arms: dict) -> dict:
    """numerics_dump of each arm (name -> (environment, extra arguments)) in a fresh
    process (XLA reads XLA_FLAGS once): name -> its losses and logits."""
    import subprocess
    base = [sys.executable, os.path.abspath(__file__), f"--model={a.model}",
            f"--width={a.width}", f"--batch={a.batch}", f"--check-steps={a.check_steps}"]
    clean = {k: v for k, v in os.environ.items() if k != "THINJAX_CONV"}
    res = {}
    with tempfile.TemporaryDirectory() as d:
        for name, (env, extra) in arms.items():
            out = os.path.join(d, f"{len(res)}.npz")
            e = {**clean, **env}
            if "XLA_FLAGS" in env:  # appended to the caller's (device count, ...)
                e["XLA_FLAGS"] = f"{clean.get('XLA_FLAGS', '')} {env['XLA_FLAGS']}".strip()
            subprocess.run(base + extra + [f"--dump-numerics={out}"], check=True, env=e)
            res[name] = dict(np.load(out))
    return res


def check_numerics(a) -> int:
    """Runs numerics_dump for each of NUMERICS_ARMS: thinjax's default model (oneDNN
    convolutions, fusion barrier, fused BatchNorm), the same with XLA's convolutions with
    the YNN flag off and on, against the reference path (XLA's convolutions, nn.BatchNorm,
    no barrier, flag off, float32), and the reference with one-ulp-perturbed inputs (the
    float-noise yardstick); compares. With --dtype=bfloat16, NUMERICS_ARMS_BF16: thinjax in
    bfloat16 (oneDNN's and XLA's convolutions) against the float32 reference, whose inputs
    moved by one bfloat16 ulp (uniformly, and at random per value: `perturbed`) give the
    band; passes if thinjax's bfloat16 step is within BF16_BAND_FACTOR bands."""
    bf16 = a.dtype == "bfloat16"
    arms = NUMERICS_ARMS_BF16 if bf16 else NUMERICS_ARMS
    res = numerics_arms(a, arms)
    ref = res["reference"]
    print(f"\n{a.model} w={a.width}, batch {a.batch}, {a.check_steps} steps; CPU: "
          f"{cpu_description()}; the YNN flag: {YNN['XLA_FLAGS']}")
    print("| vs reference (XLA conv, nn.BatchNorm, no barrier, flag off, float32) "
          "| max abs logit diff (init) | first-step gradient, relative L2 diff "
          "| max abs logit diff (after training) | max abs loss diff | loss diff at last step "
          "| final loss |")
    print("|---|---|---|---|---|---|---|")
    diff = {}
    for name in (n for n in arms if n != "reference"):
        r = res[name]
        dl = np.abs(r["losses"] - ref["losses"])
        dg = float(np.linalg.norm(r["grad"] - ref["grad"]) / np.linalg.norm(ref["grad"]))
        diff[name] = (float(np.abs(r["first"] - ref["first"]).max()), dg)
        print(f"| {name} | {diff[name][0]:.2e} | {dg:.2e} | "
              f"{np.abs(r['last'] - ref['last']).max():.2e} | {dl.max():.2e} | {dl[-1]:.2e} | "
              f"{r['losses'][-1]:.4f} (reference {ref['losses'][-1]:.4f}) |")
    if not bf16:
        ok = all(d[0] <= 1e-5 for d in diff.values())
        print("init logits of every arm within 1e-5:", ok)
        return 0 if ok else 1
    band = [max(d[i] for n, d in diff.items() if n.startswith(BF16_BAND)) for i in (0, 1)]
    got = diff[BF16_ONEDNN]
    ok = all(g <= BF16_BAND_FACTOR * lim for g, lim in zip(got, band))
    print(f"thinjax's bfloat16 step in one-ulp bands (the largest of the perturbed arms): "
          f"init logits {got[0] / band[0]:.2f} (band {band[0]:.2e}), first-step gradient "
          f"{got[1] / band[1]:.2f} (band {band[1]:.2e}); within {BF16_BAND_FACTOR}:", ok)
    return 0 if ok else 1


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


def model_name(name: str, size: int) -> str:
    """``resnet18`` at 32 px means the CIFAR-stem ResNet-18 (``resnet18_cifar``)."""
    if size == 32 and not name.endswith("_cifar") and name + "_cifar" in ARCHS:
        return name + "_cifar"
    return name


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="resnet18_cifar",
                    help="resnet20, resnet56, resnet18 (CIFAR stem at 32 px), ...")
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--input-size", type=int, default=32)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=10, help="timed steps per measurement")
    ap.add_argument("--dtype", default="float32",
                    help="compute dtype: float32 or bfloat16; --compare-torch takes a comma "
                    "list (float32,bfloat16: both, each against PyTorch in that dtype)")
    ap.add_argument("--skip-loop", action="store_true")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--compare-torch", action="store_true",
                    help="only the train and eval steps, thinjax vs PyTorch, interleaved")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds (--compare-torch)")
    ap.add_argument("--ablate", action="store_true",
                    help="--compare-torch also times thinjax without its CPU changes "
                    "(fusion barrier, fused BatchNorm)")
    ap.add_argument("--reference-model", action="store_true",
                    help="(--dump-numerics) nn.BatchNorm, no fusion barrier")
    ap.add_argument("--pruned", action="store_true",
                    help="irregular widths (a materialised pruned network) from the plan")
    ap.add_argument("--check-numerics", action="store_true",
                    help="thinjax's CPU flags vs the reference path: logits and a loss curve")
    ap.add_argument("--check-steps", type=int, default=200)
    ap.add_argument("--dump-numerics", help=argparse.SUPPRESS)
    ap.add_argument("--perturb", nargs="?", const="float32", help=argparse.SUPPRESS)
    a = ap.parse_args()
    a.model = model_name(a.model, a.input_size)
    a.dtypes = [d.strip() for d in a.dtype.split(",")]
    if len(a.dtypes) > 1 and not a.compare_torch:
        ap.error(f"--dtype={a.dtype}: a comma list only with --compare-torch")
    if a.compare_torch and not set(a.dtypes) <= {"float32", "bfloat16"}:
        ap.error(f"--dtype={a.dtype}: --compare-torch takes float32 and/or bfloat16")
    return a


def main() -> int:
    a = parse_args()
    if a.dump_numerics:
        numerics_dump(a, a.dump_numerics)
        return 0
    if a.check_numerics:
        return check_numerics(a)
    from thinjax.models.resnet import build_model
    plan = plan_from_width(a.model, a.width, 10)
    if a.pruned:
        plan = pruned_plan(plan)
    if a.compare_torch:
        res = compare_torch(a, plan)
        print_compare(a, plan, res)
        if a.json:
            print(json.dumps({"model": a.model, "width": a.width, "pruned": a.pruned,
                              "batch": a.batch, "cpu": cpu_description(),
                              "xla_flags": os.environ.get("XLA_FLAGS", ""),
                              "malloc_tuning": malloc_status(), **res}))
        return 0
    return report_rows(a, plan, build_model(plan, dtype=a.dtype))


def report_rows(a, plan: Plan, model) -> int:
    from thinjax.cost import count
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
          f"CPU: {cpu_description()}; XLA_FLAGS {os.environ.get('XLA_FLAGS', '') or '(none)'}; "
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
