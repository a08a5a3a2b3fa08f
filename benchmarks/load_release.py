"""Time to load a release network: PyTorch, thinjax's reader, the zoo's cache.

    python benchmarks/load_release.py [--name=resnet50_w16_imagenet] [--repeats=10]

Rows (each: the first call, then the median and best of --repeats more, in ms):
  torch.load          torch.load(weights_only=True): the state dict as torch tensors
                      (skipped without PyTorch)
  pt_reader.load      thinjax.interop.pt_reader.load: the state dict as numpy arrays
  import_checkpoint   reader + conversion to (plan, Flax variables): a zoo load's miss
  zoo.load (miss)     the same through the zoo: check, convert, write the cache
  zoo.load (hit)      the zoo's cache of converted networks: no .pt read, no conversion
The release file comes from $THINJAX_ZOO_DIR (default: ../shared/checkpoints/
thinresnet-release beside the repository); the cache is a temporary folder.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from thinjax import zoo  # noqa: E402
from thinjax.interop import pt_reader  # noqa: E402
from thinjax.interop.torch import import_checkpoint  # noqa: E402
from thinjax.zoo import converted  # noqa: E402


def timed(fn: Callable[[], object], repeats: int, before: Callable[[], None] = lambda: None
          ) -> tuple[float, float, float]:
    """(first, median, best) wall times of fn in ms; `before` runs untimed before each."""
    times = []
    for _ in range(repeats + 1):
        before()
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    return times[0], statistics.median(times[1:]), min(times[1:])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--name", default="resnet50_w16_imagenet")
    ap.add_argument("--repeats", type=int, default=10)
    args = ap.parse_args()
    os.environ.setdefault("THINJAX_ZOO_DIR",
                          os.path.join(os.path.dirname(ROOT), "shared", "checkpoints",
                                       "thinresnet-release"))
    os.environ["THINJAX_CACHE"] = tempfile.mkdtemp(prefix="thinjax-bench-")
    e = zoo.entry(args.name)
    path = zoo.resolve(e.name, progress=False)
    cached = converted.path_of(zoo.digests(path)["sha256"])

    def uncache() -> None:
        if os.path.exists(cached):
            os.remove(cached)

    rows = []
    try:
        import torch  # optional here: the row PyTorch gives
        rows.append(("torch.load", timed(lambda: torch.load(
            path, map_location="cpu", weights_only=True), args.repeats)))
    except ImportError:
        print("(no PyTorch: torch.load row skipped)")
    rows.append(("pt_reader.load", timed(lambda: pt_reader.load(path), args.repeats)))
    rows.append(("import_checkpoint", timed(lambda: import_checkpoint(path), args.repeats)))
    rows.append(("zoo.load (miss)", timed(lambda: zoo.load(e.name), args.repeats, uncache)))
    zoo.load(e.name)
    rows.append(("zoo.load (hit)", timed(lambda: zoo.load(e.name), args.repeats)))
    print(f"{e.name}: {os.path.getsize(path):,} bytes ({path})")
    print(f"{'':20s}{'first':>10s}{'median':>10s}{'best':>10s}   ms")
    for label, (first, med, best) in rows:
        print(f"{label:20s}{first:10.1f}{med:10.1f}{best:10.1f}")


if __name__ == "__main__":
    main()
