"""Start-up of a command with and without its caches: JAX's persistent compilation cache
and the evaluation-input cache (`thinjax.split_cache`).

    python benchmarks/startup.py [--checkpoint=zoo:resnet56_w16_cifar10] [--data=sample:cifar10]
        [--split=test] [--batch_size=500] [--rounds=2] [--phases]

Runs ``python -m thinjax.evaluate --json`` on the same checkpoint, per round: with both
caches off (THINJAX_NO_COMPILATION_CACHE=1, THINJAX_NO_EVAL_CACHE=1), with empty caches
(the first run, which fills them), again with the compilation cache alone (the split's
images read again: THINJAX_NO_EVAL_CACHE=1) and again with both (the second run, which
imports no TensorFlow), and prints each run's seconds from the process's
start to the moment its first batch starts computing (`startup_s`: everything before is
start-up) and to that batch's result (`first_batch_s`: start-up and the batch's compute),
the CPU seconds the process had spent by then (`startup_cpu_s`, `first_batch_cpu_s`: on a
machine that other work keeps busy, the wall clock stretches by the load, the CPU seconds
do not) and its wall time; every run must give the
same top-1 and loss. The zoo reads the release from ../shared beside the repo when it is
there ($THINJAX_ZOO_DIR). The other caches (the oneDNN kernels, the zoo's converted
networks, the unpacked sample) are warmed first, so only the two caches differ. The CPU
and the load average are named in the output.

``--phases`` also times where a run's start-up goes, step by step as thinjax.evaluate takes
them (imports, loading, the input pipeline, tracing, compiling or reading the compiled
program from the cache, the first batch), in a first and a second run (medians over
``--rounds``).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RELEASE = os.path.join(ROOT, "..", "shared", "checkpoints", "thinresnet-release")
sys.path.insert(0, ROOT)

from thinjax import cache, cpu  # noqa: E402  (after the path above: the repo's thinjax)
from thinjax.progress import process_seconds  # noqa: E402

KINDS = ("caches off", "first run (empty caches)", "second run, compilation cache only",
         "second run")
OFF = {"THINJAX_NO_COMPILATION_CACHE": "1", "THINJAX_NO_EVAL_CACHE": "1"}


def run(args, env: dict) -> dict:
    """One ``thinjax.evaluate --json`` process: its result, with its wall time added."""
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "thinjax.evaluate", f"--checkpoint={args.checkpoint}",
                        f"--data={args.data}", f"--split={args.split}",
                        f"--batch_size={args.batch_size}", "--json"],
                       capture_output=True, text=True, env=env, cwd=ROOT)
    wall = time.perf_counter() - t
    if r.returncode != 0:
        sys.exit(r.stderr[-2000:])
    return {**json.loads(r.stdout.strip().splitlines()[-1]), "wall_s": wall}


def _phases_child(args) -> None:
    """The steps of thinjax.evaluate (commands.evaluate.main -> evaluate_checkpoint ->
    evaluate_data -> evaluate), one at a time, each timed: prints [(step, wall s, CPU s),
    ...] as JSON. A step that this run does not take (TensorFlow when the split's inputs
    are kept) is listed with 0 s."""
    marks = [("python, site, this script", process_seconds(), time.process_time())]

    def mark(step: str) -> None:
        marks.append((step, process_seconds(), time.process_time()))

    import thinjax.commands  # noqa: F401
    mark("import jax, thinjax.commands (CPU tuning, cache on)")
    import thinjax.commands.evaluate  # noqa: F401
    mark("import thinjax.commands.evaluate (evaluation, load)")
    from thinjax import evaluation, split_cache
    from thinjax.load import load_network
    plan, variables, _ = load_network(args.checkpoint)
    mark("load the checkpoint")
    view = functools.partial(evaluation.eval_view, plan, image_size=None, resize=None)
    keep = split_cache.entry(args.data, args.split, view)
    kept = split_cache.read(keep) if keep is not None else None
    mark("look up the kept inputs (list the split, read them)")
    if kept is None:
        thinjax.commands.import_tensorflow()
    mark("import TensorFlow")
    if kept is None:
        from thinjax.data import get_source
    mark("import thinjax.data (tensorflow_datasets)")
    if kept is None:
        source = get_source(args.data)
        size, resize = evaluation.eval_view(plan, source.image_size)
        batches = evaluation._batches(source, args.split, args.batch_size, size, resize, keep)
    else:
        batches = split_cache.batches(kept, args.batch_size)
    mark("build the input pipeline")
    batch = next(batches)
    mark("first input batch")
    import jax

    traced = evaluation.eval_step.trace(variables, batch, None, model=evaluation._model(plan))
    mark("trace eval_step")
    lowered = traced.lower()
    mark("lower to StableHLO")
    compiled = lowered.compile()
    mark("compile, or read the cache")
    out = compiled(variables, batch, None)
    mark("hand the first batch to the device")
    jax.block_until_ready(out)
    mark("compute the first batch")
    for _ in batches:  # the rest of the split, untimed: a first run keeps its inputs at the end
        pass
    print(json.dumps([(s, w - marks[i - 1][1], c - marks[i - 1][2]) if i else (s, w, c)
                      for i, (s, w, c) in enumerate(marks)]))


def phases(args, env: dict, caches: list[str]) -> None:
    """Median seconds per step of a first (empty cache) and a second run."""
    cmd = [sys.executable, os.path.abspath(__file__), "--phases-child"] + sys.argv[1:]
    res: dict[str, list] = {"first run": [], "second run": []}
    for _ in range(args.rounds):
        for d in caches:
            shutil.rmtree(d, ignore_errors=True)
        for kind in res:
            r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
            if r.returncode != 0:
                sys.exit(r.stderr[-2000:])
            res[kind].append(json.loads(r.stdout.strip().splitlines()[-1]))
    print(f"\nwhere start-up goes, median of {args.rounds} (wall s / CPU s of the process: all "
          "its threads, tf.data's decoding of the next batches included)")
    print("| step | first run | second run |\n|---|---|---|")
    steps = [s for s, _, _ in res["second run"][0]]
    total = {k: [0.0, 0.0] for k in res}
    for i, step in enumerate(steps):
        cells = []
        for k, runs in res.items():
            w, c = (statistics.median(r[i][j] for r in runs) for j in (1, 2))
            total[k][0] += w
            total[k][1] += c
            cells.append(f"{w:.2f} / {c:.2f}")
        print(f"| {step} | {' | '.join(cells)} |")
        if i == len(steps) - 2:
            print("| **start-up: to the start of the first batch** | "
                  + " | ".join(f"{w:.2f} / {c:.2f}" for w, c in total.values()) + " |")
    print("| **to the first batch's result** | "
          + " | ".join(f"{w:.2f} / {c:.2f}" for w, c in total.values()) + " |")


def report(args, res: dict[str, list[dict]], loads: tuple) -> None:
    """The table of runs (medians, all values in brackets) and the first/second ratios."""
    print(f"CPU: {cpu.cpu_description()}; load average {loads[0]:.2f} before, "
          f"{loads[1]:.2f} after")
    print(f"thinjax.evaluate --checkpoint={args.checkpoint} --data={args.data} "
          f"--split={args.split} --batch_size={args.batch_size}, {args.rounds} round(s); "
          "median (all)")
    keys = (("startup_s", "start-up (s)"), ("startup_cpu_s", "its CPU s"),
            ("first_batch_s", "first batch done (s)"), ("first_batch_cpu_s", "its CPU s"),
            ("wall_s", "wall (s)"))
    print(f"| run | {' | '.join(h for _, h in keys)} |\n|---|{'---|' * len(keys)}")
    for k, runs in res.items():
        cells = []
        for key, _ in keys:
            xs = [r[key] for r in runs]
            cells.append(f"{statistics.median(xs):.2f} ({', '.join(f'{x:.2f}' for x in xs)})")
        print(f"| {k} | {' | '.join(cells)} |")
    for key, what in (("startup_s", "starts its first batch {:.2f}x sooner"),
                      ("startup_cpu_s", "starts it after {:.2f}x less CPU"),
                      ("first_batch_s", "has its first batch's result {:.2f}x sooner"),
                      ("first_batch_cpu_s", "has it after {:.2f}x less CPU")):
        first = statistics.median(r[key] for r in res[KINDS[1]])
        for kind in KINDS[2:]:
            second = statistics.median(r[key] for r in res[kind])
            print(f"{kind}: {what.format(first / second)} than the first run")
    outcomes = {(r["top1"], r["loss"]) for runs in res.values() for r in runs}
    top1, loss = next(iter(outcomes))
    print(f"top-1 {top1:.2f}%, loss {loss:.6f} in every run" if len(outcomes) == 1
          else f"RUNS DIFFER: (top-1, loss) {sorted(outcomes)}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default="zoo:resnet56_w16_cifar10")
    p.add_argument("--data", default="sample:cifar10")
    p.add_argument("--split", default="test")
    p.add_argument("--batch_size", type=int, default=500)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--phases", action="store_true", help="also time each start-up step")
    p.add_argument("--phases-child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.phases_child:
        return _phases_child(args)
    root = tempfile.mkdtemp(prefix="thinjax-startup-")
    env = {**os.environ, "THINJAX_CACHE": root}
    if os.path.isdir(RELEASE):  # the release beside the repo: no download
        env.setdefault("THINJAX_ZOO_DIR", RELEASE)
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    run(args, {**env, **OFF})  # builds kernels, converts, unpacks
    os.environ["THINJAX_CACHE"] = root
    caches = [cache.compilation_dir(cpu.machine_id()), cache.eval_inputs_dir()]
    res: dict[str, list] = {k: [] for k in KINDS}
    load_before = os.getloadavg()[0]
    for _ in range(args.rounds):
        res[KINDS[0]].append(run(args, {**env, **OFF}))
        for d in caches:
            shutil.rmtree(d, ignore_errors=True)
        res[KINDS[1]].append(run(args, env))
        res[KINDS[2]].append(run(args, {**env, "THINJAX_NO_EVAL_CACHE": "1"}))
        res[KINDS[3]].append(run(args, env))
    report(args, res, (load_before, os.getloadavg()[0]))
    if args.phases:
        phases(args, env, caches)
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
