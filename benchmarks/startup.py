"""Start-up of a command with and without JAX's persistent compilation cache.

    python benchmarks/startup.py [--checkpoint=zoo:resnet56_w16_cifar10] [--data=sample:cifar10]
        [--rounds=2]

Runs ``python -m thinjax.evaluate --json`` on the same checkpoint, per round: with the
cache off (THINJAX_NO_COMPILATION_CACHE=1), with an empty cache (the first run, which
fills it) and again (the second run), and prints each run's seconds from the process's
start to its first evaluated batch (`first_batch_s`) and its wall time. The zoo reads the release
from ../shared beside the repo when it is there ($THINJAX_ZOO_DIR). The other caches
(the oneDNN kernels, the zoo's converted networks) are warmed first, so only compiling
differs. The CPU is named in the output.
"""

from __future__ import annotations

import argparse
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


def run(args, env: dict) -> tuple[float, float]:
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "thinjax.evaluate", f"--checkpoint={args.checkpoint}",
                        f"--data={args.data}", "--json"], capture_output=True, text=True,
                       env=env, cwd=ROOT)
    wall = time.perf_counter() - t
    if r.returncode != 0:
        sys.exit(r.stderr[-2000:])
    return json.loads(r.stdout.strip().splitlines()[-1])["first_batch_s"], wall


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default="zoo:resnet56_w16_cifar10")
    p.add_argument("--data", default="sample:cifar10")
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args()
    root = tempfile.mkdtemp(prefix="thinjax-startup-")
    env = {**os.environ, "THINJAX_CACHE": root}
    if os.path.isdir(RELEASE):  # the release beside the repo: no download
        env.setdefault("THINJAX_ZOO_DIR", RELEASE)
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    run(args, {**env, "THINJAX_NO_COMPILATION_CACHE": "1"})  # builds kernels, converts
    os.environ["THINJAX_CACHE"] = root
    compiled = cache.compilation_dir(cpu.machine_id())
    res: dict[str, list] = {"cache off": [], "first run (empty cache)": [], "second run": []}
    for _ in range(args.rounds):
        res["cache off"].append(run(args, {**env, "THINJAX_NO_COMPILATION_CACHE": "1"}))
        shutil.rmtree(compiled, ignore_errors=True)
        res["first run (empty cache)"].append(run(args, env))
        res["second run"].append(run(args, env))
    print(f"CPU: {cpu.cpu_description()}")
    print(f"thinjax.evaluate --checkpoint={args.checkpoint} --data={args.data}, "
          f"{args.rounds} round(s); median (all)")
    print("| run | first batch after (s) | wall (s) |\n|---|---|---|")
    for k, v in res.items():
        fb, wall = [x[0] for x in v], [x[1] for x in v]
        print(f"| {k} | {statistics.median(fb):.1f} ({', '.join(f'{x:.1f}' for x in fb)}) | "
              f"{statistics.median(wall):.1f} |")
    first = statistics.median(x[0] for x in res["first run (empty cache)"])
    second = statistics.median(x[0] for x in res["second run"])
    print(f"second run starts its first batch {first / second:.2f}x sooner than the first")
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
