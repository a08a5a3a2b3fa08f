"""ImageNet training input pipeline, images/s per host core: thinjax (tf.data) vs PyTorch.

    taskset -c 0 python benchmarks/input_pipeline.py          # one core: the per-core rate
    python benchmarks/input_pipeline.py                       # all cores of this process
    taskset -c 0 python benchmarks/input_pipeline.py --stages # thinjax's ms per image by stage

Both pipelines read the same JPEGs (``../shared/data/imagenet-sample.zip``: 1,000 ImageNet
images, unpacked once to a temporary folder and repeated epoch after epoch) and apply the
training transform of ``configs/thin_r50.py``: decode, random-resized crop to 176 (scale
0.08-1), horizontal flip, TrivialAugmentWide, normalise, random erasing (p=0.1), batch.

* thinjax: ``thinjax.data.pipeline.train_batches`` (tf.data, AUTOTUNE over the process's
  cores), no cache: every JPEG is read and decoded on every epoch.
* PyTorch: a ``torch.utils.data.DataLoader`` with one worker per core over a Dataset that
  applies torchvision's transforms. torchvision is not installed here (its 0.28.0 wheel
  for torch 2.13 on this index is a CUDA build that does not load on CPU-only torch), so
  the transforms are torchvision's PIL code paths written out with PIL (``Image.open``
  + ``convert("RGB")``, ``resize`` on the crop box with bilinear filtering, PIL
  ``ImageOps``/``ImageEnhance``/``transform`` for TrivialAugmentWide's ops with its
  magnitude bins) and torch tensor ops for normalise and erasing.

Each pipeline runs in its own process (its DataLoader workers are its children), started
once and warmed up; the controller times them in alternation, --rounds windows of
--batches batches each, and before each window waits until every pipeline process has
gone quiet (its background prefetching done), so that one pipeline's refill is never
counted in the other's window. Per window: images/s (wall) and the CPU time of the
pipeline's whole process tree per image (user + system, workers included): on a machine
shared with other work, the CPU time is the steadier measure of what an image costs.
Printed: medians, images/s per core (images/s / cores of this process), images per
CPU-second, the per-round ratio thinjax / PyTorch, the CPU model and the load average.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import sys
import tempfile
import time
import zipfile

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

import thinjax.commands  # noqa: F401  (tunes the process as the commands do: first)
from thinjax import pixels
from thinjax.cpu import cpu_description

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ZIP = os.path.join(os.path.dirname(ROOT), "shared", "data", "imagenet-sample.zip")
MEAN = np.array(pixels.MEAN, np.float32) * 255
STD = np.array(pixels.STD, np.float32) * 255


def unpack(zip_path: str, dest: str) -> str:
    """The sample's image-folder root (class folders of JPEGs)."""
    with zipfile.ZipFile(zip_path) as z:
        z.extractall(dest)
    for root, dirs, _ in os.walk(dest):
        if dirs and all(d.startswith("n") for d in dirs):
            return root
    raise SystemExit(f"no class folders in {zip_path}")


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


# -- thinjax -----------------------------------------------------------------------------

def data_config(root: str, size: int, trivial_augment: bool = True, erasing: float = 0.1):
    """thinjax's data config for the ImageNet training transform on the unpacked sample."""
    from thinjax.config import base_config
    c = base_config().data
    folder = os.path.dirname(root)  # image folder: <folder>/<split>/<class>/*.JPEG
    c.name, c.train_split = folder, os.path.basename(root)
    c.augment, c.image_size, c.cache = "imagenet", size, "none"
    c.trivial_augment, c.random_erasing, c.shuffle_buffer = trivial_augment, erasing, 1000
    return c


def thinjax_batches(root: str, batch: int, size: int):
    from thinjax.data import get_source
    from thinjax.data.pipeline import train_batches
    c = data_config(root, size)
    src = get_source(c.name)
    return train_batches(src, c, batch, 0, 0, src.num_examples(c.train_split) // batch)


# -- PyTorch (torchvision's PIL paths, written out) ----------------------------------------

def rrc_box(w: int, h: int, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
    """torchvision.transforms.RandomResizedCrop.get_params, returned as a PIL box."""
    area = w * h
    for _ in range(10):
        a = area * random.uniform(*scale)
        r = math.exp(random.uniform(math.log(ratio[0]), math.log(ratio[1])))
        cw, ch = int(round(math.sqrt(a * r))), int(round(math.sqrt(a / r)))
        if 0 < cw <= w and 0 < ch <= h:
            x, y = random.randint(0, w - cw), random.randint(0, h - ch)
            return x, y, x + cw, y + ch
    r = w / h  # torchvision's fallback: a central crop at the nearest allowed ratio
    cw, ch = (w, int(round(w / ratio[0]))) if r < ratio[0] else \
        (int(round(h * ratio[1])), h) if r > ratio[1] else (w, h)
    x, y = (w - cw) // 2, (h - ch) // 2
    return x, y, x + cw, y + ch


def _affine(img, m):
    return img.transform(img.size, Image.AFFINE, m, Image.NEAREST, fillcolor=(0, 0, 0))


TA_OPS = [  # TrivialAugmentWide: (name, magnitude range over 31 bins, signed, op)
    ("Identity", 0.0, False, lambda im, m: im),
    ("ShearX", 0.99, True, lambda im, m: _affine(im, (1, m, 0, 0, 1, 0))),
    ("ShearY", 0.99, True, lambda im, m: _affine(im, (1, 0, 0, m, 1, 0))),
    ("TranslateX", 32.0, True, lambda im, m: _affine(im, (1, 0, -int(m), 0, 1, 0))),
    ("TranslateY", 32.0, True, lambda im, m: _affine(im, (1, 0, 0, 0, 1, -int(m)))),
    ("Rotate", 135.0, True, lambda im, m: im.rotate(m, Image.NEAREST, fillcolor=(0, 0, 0))),
    ("Brightness", 0.99, True, lambda im, m: ImageEnhance.Brightness(im).enhance(1 + m)),
    ("Color", 0.99, True, lambda im, m: ImageEnhance.Color(im).enhance(1 + m)),
    ("Contrast", 0.99, True, lambda im, m: ImageEnhance.Contrast(im).enhance(1 + m)),
    ("Sharpness", 0.99, True, lambda im, m: ImageEnhance.Sharpness(im).enhance(1 + m)),
    ("Posterize", 6.0, False, lambda im, m: ImageOps.posterize(im, 8 - int(m))),
    ("Solarize", 255.0, False, lambda im, m: ImageOps.solarize(im, 255 - int(m))),
    ("AutoContrast", 0.0, False, lambda im, m: ImageOps.autocontrast(im)),
    ("Equalize", 0.0, False, lambda im, m: ImageOps.equalize(im)),
]


def trivial_augment_wide(img, bins: int = 31):
    _, top, signed, op = random.choice(TA_OPS)
    m = top * random.randrange(bins) / (bins - 1)
    return op(img, -m if signed and random.random() < 0.5 else m)


def random_erasing(x, p: float = 0.1, scale=(0.02, 0.33), ratio=(0.3, 3.3)):
    """torchvision.transforms.RandomErasing (value=0) on a CHW tensor."""
    import torch
    if random.random() >= p:
        return x
    _, h, w = x.shape
    for _ in range(10):
        a = h * w * random.uniform(*scale)
        r = math.exp(random.uniform(math.log(ratio[0]), math.log(ratio[1])))
        eh, ew = int(round(math.sqrt(a * r))), int(round(math.sqrt(a / r)))
        if eh < h and ew < w:
            i, j = random.randint(0, h - eh), random.randint(0, w - ew)
            x[:, i:i + eh, j:j + ew] = torch.zeros(())
            return x
    return x


def torch_loader(root: str, batch: int, size: int, workers: int):
    import torch

    files = sorted(os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs
                   if f.lower().endswith((".jpeg", ".jpg")))
    classes = sorted({os.path.basename(os.path.dirname(f)) for f in files})
    mean, std = torch.from_numpy(MEAN)[:, None, None], torch.from_numpy(STD)[:, None, None]

    class Images(torch.utils.data.Dataset):
        def __len__(self):
            return len(files)

        def __getitem__(self, i):
            with open(files[i], "rb") as f:
                img = Image.open(f).convert("RGB")
            img = img.resize((size, size), Image.BILINEAR, box=rrc_box(*img.size))
            if random.random() < 0.5:
                img = img.transpose(Image.FLIP_LEFT_RIGHT)
            img = trivial_augment_wide(img)
            x = torch.from_numpy(np.asarray(img, np.float32).transpose(2, 0, 1).copy())
            x = random_erasing((x - mean) / std)
            return x, classes.index(os.path.basename(os.path.dirname(files[i])))

    loader = torch.utils.data.DataLoader(Images(), batch, shuffle=True, drop_last=True,
                                         num_workers=workers, persistent_workers=True)

    def endless():
        while True:
            yield from loader

    return endless()


# -- the controller and one process per pipeline ------------------------------------------

PIPELINES = {"thinjax": "thinjax (tf.data)",
             "pytorch": "PyTorch DataLoader (PIL, torchvision's ops)"}


def worker(a) -> int:
    """One pipeline, started and warmed up; then, per line "N D" on stdin, D batches
    untimed (what it had buffered while it waited), "go", N batches timed, "{seconds}";
    an empty line ends it."""
    n = cores()
    it = (thinjax_batches(a.root, a.batch, a.size) if a.worker == "thinjax"
          else torch_loader(a.root, a.batch, a.size, n))
    for _ in range(2):  # start-up: workers, tf.data graph, first files
        next(it)
    print("ready", flush=True)
    for line in sys.stdin:
        if not line.strip():
            break
        timed, drained = (int(x) for x in line.split())
        for _ in range(drained):
            next(it)
        print("go", flush=True)
        t = time.perf_counter()
        for _ in range(timed):
            next(it)
        print(f"{time.perf_counter() - t:.6f}", flush=True)
    os._exit(0)  # DataLoader workers and tf.data threads: no orderly shutdown needed


def tree_cpu(proc) -> float:
    """CPU seconds (user + system) of `proc` and its live descendants."""
    total = 0.0
    for p in [proc] + proc.children(recursive=True):
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except Exception:  # a worker that has just exited
            pass
    return total


def settle(procs, quiet_s: float = 0.02, every_s: float = 0.5, limit_s: float = 60) -> None:
    """Waits until no pipeline process tree uses more than `quiet_s` CPU seconds in
    `every_s`: their prefetch buffers are full, nothing of theirs runs in a window."""
    end = time.monotonic() + limit_s
    last = [tree_cpu(p) for p in procs]
    while time.monotonic() < end:
        time.sleep(every_s)
        now = [tree_cpu(p) for p in procs]
        if all(b - a <= quiet_s for a, b in zip(last, now)):
            return
        last = now


def start(name: str, root: str, a):
    import subprocess

    import psutil
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", name, "--root", root,
           "--batch", str(a.batch), "--size", str(a.size)]
    child = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                             stderr=subprocess.DEVNULL)
    if child.stdout.readline().strip() != "ready":
        raise SystemExit(f"the {name} pipeline did not start: run {' '.join(cmd)}")
    return child, psutil.Process(child.pid)


def window(child, proc, batches: int, batch: int, drain: int = 8) -> tuple[float, float]:
    """(images/s, CPU ms per image) of one window of `batches` batches, after `drain`
    batches that take what the pipeline buffered while it waited (thinjax prefetches 4
    batches and its map's output, a DataLoader 2 batches per worker): timed from the
    pipeline's steady state, its output produced in the window."""
    child.stdin.write(f"{batches} {drain}\n")
    child.stdin.flush()
    if child.stdout.readline().strip() != "go":
        raise SystemExit("a pipeline process stopped")
    cpu = tree_cpu(proc)
    seconds = float(child.stdout.readline())
    return batches * batch / seconds, (tree_cpu(proc) - cpu) / (batches * batch) * 1e3


STAGES = {  # name -> (trivial_augment, random_erasing) of thinjax's transform
    "decode + random-resized crop + flip + normalise": (False, 0.0),
    "+ TrivialAugmentWide": (True, 0.0),
    "+ random erasing p=0.1 (the full transform)": (True, 0.1),
}


def stage_costs(root: str, a) -> None:
    """ms per image of thinjax's transform, stage by stage (one map call at a time, in
    batches of 32, files read from memory, thinjax's tf.data options): wall and CPU time."""
    import glob

    from thinjax.data._tf import tf
    from thinjax.data.pipeline import _train_example_fn, pipeline_options
    data = [open(f, "rb").read() for f in sorted(glob.glob(os.path.join(root, "*", "*")))]
    ds0 = tf.data.Dataset.from_tensor_slices(data).cache().enumerate()
    print(f"\nthinjax's transform at {a.size}px, one map call at a time, ms per image "
          f"(median of {a.rounds} passes over {len(data)} images); CPU: {cpu_description()}; "
          f"load average {os.getloadavg()[0]:.2f}")
    print("| stages | ms per image | CPU ms per image |\n|---|---|---|")
    for name, (ta, erasing) in STAGES.items():
        fn = _train_example_fn(data_config(root, a.size, ta, erasing), 0, 0)
        ds = ds0.map(lambda i, b: fn(i, {"image": b, "label": 0}),  # noqa: B023 (used now)
                     num_parallel_calls=1).batch(32)
        ds = ds.with_options(pipeline_options())
        for _ in ds.take(2):
            pass
        ms, cpu = [], []
        for _ in range(a.rounds):
            t, c = time.perf_counter(), time.process_time()
            for _ in ds:
                pass
            ms.append((time.perf_counter() - t) / len(data) * 1e3)
            cpu.append((time.process_time() - c) / len(data) * 1e3)
        print(f"| {name} | {np.median(ms):.2f} | {np.median(cpu):.2f} |")


def report(res: dict, a, n: int, load: tuple) -> None:
    print(f"\nImageNet training transform at {a.size}px, batch {a.batch}, {n} core(s) for "
          f"this process; CPU: {cpu_description()}; load average {load[0]:.2f} at the "
          f"start, {os.getloadavg()[0]:.2f} at the end; medians of {a.rounds} "
          f"{'alternating ' if len(res) > 1 else ''}windows of {a.batches} batches")
    print("| pipeline | images/s | images/s per core | CPU ms per image | images per "
          "CPU-second | windows (images/s) |\n|---|---|---|---|---|---|")
    for k, v in res.items():
        r, c = float(np.median([x[0] for x in v])), float(np.median([x[1] for x in v]))
        print(f"| {PIPELINES[k]} | {r:,.0f} | {r / n:,.0f} | {c:.2f} | {1e3 / c:,.0f} | "
              f"{', '.join(f'{x[0]:.0f}' for x in v)} |")
    if len(res) == 2:
        (tv, pv) = res["thinjax"], res["pytorch"]
        rates = [t[0] / p[0] for t, p in zip(tv, pv)]
        cpus = [p[1] / t[1] for t, p in zip(tv, pv)]
        print(f"thinjax / PyTorch per round: images/s {', '.join(f'{x:.2f}x' for x in rates)}"
              f"; by CPU time per image {', '.join(f'{x:.2f}x' for x in cpus)}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--zip", default=ZIP)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--size", type=int, default=176)
    ap.add_argument("--batches", type=int, default=31, help="batches per timed window")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--only", choices=list(PIPELINES), help="time one pipeline alone")
    ap.add_argument("--stages", action="store_true",
                    help="thinjax's per-image cost, stage by stage, instead")
    ap.add_argument("--worker", choices=list(PIPELINES), help=argparse.SUPPRESS)
    ap.add_argument("--root", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        return worker(a)
    n, load = cores(), os.getloadavg()
    with tempfile.TemporaryDirectory() as d:
        root = unpack(a.zip, d)
        if a.stages:
            stage_costs(root, a)
            return 0
        names = [a.only] if a.only else list(PIPELINES)
        procs = {k: start(k, root, a) for k in names}
        res = {k: [] for k in names}
        for _ in range(a.rounds):
            for k, (child, proc) in procs.items():
                settle([p for _, p in procs.values()])
                res[k].append(window(child, proc, a.batches, a.batch))
        for child, _ in procs.values():
            child.stdin.write("\n")
            child.stdin.flush()
            child.wait()
    report(res, a, n, load)
    return 0


if __name__ == "__main__":
    sys.exit(main())
