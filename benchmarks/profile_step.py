"""Where a CPU training step spends its time: thinjax (XLA:CPU) vs PyTorch, by category.

    python benchmarks/profile_step.py --model=resnet20 --width=8
    python benchmarks/profile_step.py --model=resnet56 --width=16 --steps=2
    python benchmarks/profile_step.py --conv-micro --width=16 --steps=5
    python benchmarks/profile_step.py --model=resnet56 --width=16 --dtype=bfloat16
    XLA_FLAGS=--xla_cpu_multi_thread_eigen=false taskset -c 0 python benchmarks/profile_step.py
        # one core each (torch follows the affinity): the per-core profile of docs/performance.md
    XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=dot,eltwise,reduce \
        python benchmarks/profile_step.py ...   # with the YNN fusions

thinjax: the step of ``train_throughput.py`` (SGD momentum, label smoothing, BN training
mode) traced with ``jax.profiler`` (one event per XLA thunk, i.e. per top-level HLO
instruction); each instruction is put in a category from the compiled HLO: its opcode, the
opcodes inside a fusion, and its JAX source path (``transpose(jvp(...))`` is the backward
pass, ``.../bnN/...`` is BatchNorm, no ``jvp`` at all is the optimizer update).
PyTorch: the same step under ``torch.profiler`` with the forward, backward and optimizer in
``record_function`` ranges; leaf operators' self time, by phase and kind.
Times are ms per step summed over operators (XLA may run two thunks at once, so the sum can
exceed the wall time, which is printed too). On a shared machine, compare shares.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import sys
import tempfile
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train_throughput import model_name, plain_step, torch_setup  # noqa: E402

import thinjax.commands  # noqa: E402,F401  (tunes the process as the commands do: first)
from thinjax.allocator import malloc_status  # noqa: E402
from thinjax.cpu import cpu_description  # noqa: E402
from thinjax.models.resnet import build_model  # noqa: E402
from thinjax.plan import plan_from_width  # noqa: E402

INST = re.compile(r"^\s*(?:ROOT )?%([\w.-]+) = (.+?) ([a-z][\w-]*)\((.*)$")
COMP = re.compile(r"^(ENTRY )?%([\w.-]+) ")
ORDER = ["conv fwd", "conv bwd", "conv bwd layout (transpose/copy)", "BatchNorm fwd",
         "BatchNorm bwd", "elementwise fwd (relu, add)", "elementwise bwd (relu, add)",
         "pool, head, loss", "optimizer", "other"]


def parse_hlo(text: str) -> tuple[dict, dict]:
    """{computation: [opcodes]} and {entry instruction: (opcode, op_name, called comps)}."""
    comps, entry, cur, is_entry = collections.defaultdict(list), {}, None, False
    for line in text.splitlines():
        m = COMP.match(line)
        if m:
            is_entry, cur = bool(m.group(1)), m.group(2)
            continue
        m = INST.match(line)
        if not m or cur is None:
            continue
        name, _, op, rest = m.groups()
        target = re.search(r'custom_call_target="([^"]+)"', rest)
        op = f"{op}:{target.group(1)}" if target else op
        comps[cur].append(op)
        if is_entry:
            meta = re.search(r'op_name="([^"]*)"', rest)
            calls = re.findall(r"(?:calls|to_apply)=%([\w.-]+)", rest)
            entry[name] = (op, meta.group(1) if meta else "", calls)
    return comps, entry


def category(op: str, op_name: str, inner: list[str]) -> str:
    """The category of one top-level XLA instruction."""
    bwd = "transpose(" in op_name
    if op.startswith("custom-call:thinjax_onednn_conv"):  # thinjax.ops' oneDNN convolutions
        return "conv fwd" if op.endswith("_fwd") else "conv bwd"
    if op == "convolution" or "convolution" in inner:
        # forward convs carry their jvp(...) source path; the kernel-gradient convs that
        # XLA rewrites (transposes + a YNN dot fusion) carry none
        return "conv bwd" if bwd or not op_name else "conv fwd"
    if not op_name and ("transpose" in inner or "copy" in inner or op in ("transpose", "copy")):
        return "conv bwd layout (transpose/copy)"
    if "jvp(" not in op_name and "transpose(" not in op_name:
        return "optimizer" if op_name else "other"
    if re.search(r"/(bn\d*)/", op_name):
        return "BatchNorm bwd" if bwd else "BatchNorm fwd"
    if "ResNet" not in op_name or "/head/" in op_name or "reduce" in op_name.rsplit("/", 1)[-1]:
        return "pool, head, loss"
    return "elementwise bwd (relu, add)" if bwd else "elementwise fwd (relu, add)"


def jax_profile(model, a) -> tuple[dict, float]:
    """{category: ms per step} from a jax.profiler trace, and the wall ms per step."""
    run = plain_step(model, a.batch, 32, 10)
    run(), run()
    comps, entry = parse_hlo(run.hlo_text())
    with tempfile.TemporaryDirectory() as d:
        t = time.perf_counter()
        jax.profiler.start_trace(d, create_perfetto_trace=True)
        for _ in range(a.steps):
            run()
        jax.profiler.stop_trace()
        wall = (time.perf_counter() - t) / a.steps * 1e3
        trace = sorted(glob.glob(os.path.join(d, "**", "*.trace.json.gz"), recursive=True))[-1]
        with gzip.open(trace) as f:
            events = json.load(f)["traceEvents"]
    out = collections.Counter()
    for e in events:
        args = e.get("args", {})
        if e.get("ph") != "X" or args.get("hlo_module") != "jit_step":
            continue
        op, op_name, calls = entry.get(e["name"], ("?", "", []))
        inner = [o for c in calls for o in comps.get(c, [])]
        out[category(op, op_name, inner)] += e["dur"] / 1e3 / a.steps
    return dict(out), wall


def torch_category(name: str, phase: str) -> str:
    if phase == "opt":
        return "optimizer"
    n = name.lower()
    bwd = phase == "bwd"
    if "conv" in n:
        return "conv bwd" if bwd else "conv fwd"
    if "batch_norm" in n:
        return "BatchNorm bwd" if bwd else "BatchNorm fwd"
    if any(k in n for k in ("relu", "threshold", "add")):
        return "elementwise bwd (relu, add)" if bwd else "elementwise fwd (relu, add)"
    if phase == "loss" or any(k in n for k in ("mean", "addmm", "linear", "mm", "softmax")):
        return "pool, head, loss"
    return "other"


def _phase(ev) -> str | None:
    p = ev
    while p is not None:
        if p.name in ("fwd", "bwd", "opt", "loss"):
            return p.name
        p = p.cpu_parent
    return None


def torch_profile(plan, a) -> tuple[dict, float]:
    """{category: ms per step} of PyTorch's step (leaf operators' self time), wall ms."""
    import torch
    from torch.autograd.profiler import record_function

    model, x, autocast = torch_setup(plan, a.batch, 32, a.dtype, train=True)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    crit = torch.nn.CrossEntropyLoss(label_smoothing=0.1)
    y = torch.arange(a.batch) % plan.num_classes

    def step():
        opt.zero_grad(set_to_none=True)
        with record_function("fwd"), autocast():
            logits = model(x)
        with record_function("loss"):
            loss = crit(logits, y)
        with record_function("bwd"):
            loss.backward()
        with record_function("opt"):
            opt.step()

    step(), step()
    t = time.perf_counter()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(a.steps):
            step()
    wall = (time.perf_counter() - t) / a.steps * 1e3
    out = collections.Counter()
    for ev in prof.events():
        phase = _phase(ev)
        if phase is None or ev.name in ("fwd", "bwd", "opt", "loss"):
            continue
        out[torch_category(ev.name, phase)] += ev.self_cpu_time_total / 1e3 / a.steps
    return dict(out), wall


def process_setup() -> str:
    """XLA_FLAGS and the malloc tuning of this process, for table headers."""
    return (f"XLA_FLAGS {os.environ.get('XLA_FLAGS', '') or '(none)'}; "
            f"malloc tuning {malloc_status()}")


def print_table(a, jx: dict, jwall: float, tc: dict, twall: float) -> None:
    print(f"\n{a.model} w={a.width}, batch {a.batch}, {a.dtype}, one training step; "
          f"CPU: {cpu_description()}; jax {jax.__version__}, "
          f"{process_setup()}")
    print("| category | thinjax ms/step | share | PyTorch ms/step | share | thinjax/PyTorch time |")
    print("|---|---|---|---|---|---|")
    js, ts = sum(jx.values()), sum(tc.values())
    for k in ORDER:
        j, t = jx.get(k, 0.0), tc.get(k, 0.0)
        if j or t:
            ratio = f"{j / t:.2f}" if t else "-"
            print(f"| {k} | {j:.1f} | {j / js:.0%} | {t:.1f} | {t / ts:.0%} | {ratio} |")
    print(f"| sum of operators | {js:.1f} | | {ts:.1f} | | {js / ts:.2f} |")
    print(f"| wall time per step (profiled) | {jwall:.1f} | | {twall:.1f} | | "
          f"{jwall / twall:.2f} |")


def conv_variants(batch: int, hw: int, c: int):
    """A 3x3 conv (stride 1, pad 1, c -> c) and its input and weight gradients, five
    ways: XLA's convolution, thinjax's (oneDNN through XLA FFI, when it loads here),
    patches + dot (im2col by conv_general_dilated_patches, or by 9 shifted slices), and
    PyTorch's conv2d. Callables."""
    import jax.numpy as jnp
    import torch

    from thinjax.ops import conv as ops_conv
    x = jnp.asarray(np.random.default_rng(0).standard_normal((batch, hw, hw, c)), jnp.float32)
    w = jnp.asarray(np.random.default_rng(1).standard_normal((3, 3, c, c)), jnp.float32)
    dn = ("NHWC", "HWIO", "NHWC")

    def conv(x, w):
        return jax.lax.conv_general_dilated(x, w, (1, 1), [(1, 1)] * 2, dimension_numbers=dn)

    def patches(x, w):  # patch features come out channel-major: (c, kh, kw)
        p = jax.lax.conv_general_dilated_patches(x, (3, 3), (1, 1), [(1, 1)] * 2,
                                                 dimension_numbers=dn)
        return p @ w.transpose(2, 0, 1, 3).reshape(9 * c, c)

    def slices(x, w):  # im2col from 9 shifted slices (its gradient is pad + add, no conv)
        n, h, wd, _ = x.shape
        xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
        p = jnp.concatenate([xp[:, i:i + h, j:j + wd] for i in range(3) for j in range(3)], -1)
        return p @ w.reshape(9 * c, c)

    variants = {"XLA conv": conv, "patches + dot": patches, "slices + dot": slices}
    if ops_conv.resolve() == "onednn":
        variants["thinjax oneDNN conv"] = lambda x, w: ops_conv.onednn_conv2d(x, w, 1, 1)
    out = {}
    for name, f in variants.items():
        g = jax.jit(jax.grad(lambda x, w, f=f: (f(x, w) ** 2).sum(), argnums=(0, 1)))
        fw = jax.jit(f)
        out[name] = (lambda fw=fw: fw(x, w).block_until_ready(),
                     lambda g=g: jax.block_until_ready(g(x, w)))
    tx = torch.randn(batch, c, hw, hw, requires_grad=True)
    tw = torch.randn(c, c, 3, 3, requires_grad=True)

    def t_fwd():
        with torch.no_grad():
            torch.nn.functional.conv2d(tx, tw, padding=1).sum().item()

    def t_bwd():
        (torch.nn.functional.conv2d(tx, tw, padding=1) ** 2).sum().backward()

    out["PyTorch conv2d"] = (t_fwd, t_bwd)
    return out


def conv_micro(a) -> None:
    """ms per call of one 3x3 conv (forward; forward + both gradients) at the CIFAR ResNet
    stage shapes of width a.width, interleaved, medians of 3 rounds."""
    from train_throughput import timeit
    print(f"\n3x3 conv, batch {a.batch}, float32; CPU: {cpu_description()}; "
          f"{process_setup()}")
    for i, hw in enumerate((32, 16, 8)):
        c = a.width * 2**i
        v = conv_variants(a.batch, hw, c)
        if i == 0:
            cols = [f"{k} {what}" for what in ("fwd", "fwd+bwd") for k in v]
            print("| input (HxWxC) | " + " | ".join(cols) + " |")
            print("|---" * (len(cols) + 1) + "|")
        for f, b in v.values():
            f(), b()
        ms = {k: ([], []) for k in v}
        for _ in range(3):
            for k, (f, b) in v.items():
                ms[k][0].append(timeit(f, a.steps) * 1e3)
                ms[k][1].append(timeit(b, a.steps) * 1e3)
        cells = [f"{np.median(ms[k][j]):.1f}" for j in (0, 1) for k in v]
        print(f"| {hw}x{hw}x{c} | " + " | ".join(cells) + " |")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="resnet20")
    ap.add_argument("--width", type=int, default=8)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                    help="the compute dtype (PyTorch: autocast + channels_last for bfloat16)")
    ap.add_argument("--conv-micro", action="store_true",
                    help="only one 3x3 conv per stage: XLA conv vs thinjax's oneDNN conv "
                         "vs patches+dot vs slices+dot vs PyTorch")
    a = ap.parse_args()
    if a.conv_micro:
        conv_micro(a)
        return 0
    a.model = model_name(a.model, 32)
    plan = plan_from_width(a.model, a.width, 10)
    jx, jwall = jax_profile(build_model(plan, dtype=a.dtype), a)
    tc, twall = torch_profile(plan, a)
    print_table(a, jx, jwall, tc, twall)
    return 0


if __name__ == "__main__":
    sys.exit(main())
