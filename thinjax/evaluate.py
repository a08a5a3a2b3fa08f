"""Evaluate a checkpoint on a dataset: top-1, top-5 and loss, every example counted once.

    python -m thinjax.evaluate --checkpoint=PATH --data=DATASET [--split=test] [--json]

PATH: a thinjax checkpoint directory (or a training workdir), or a PyTorch .pt/.pth,
.safetensors or .npz state dict. DATASET: an image folder (split/label/*.jpg), a TFDS
name (cifar10, imagenet2012, ...) or ``sample:cifar10`` (bundled, offline).
Preprocessing follows the study's release: decode, scale to [0, 1], normalise with the
ImageNet mean/std; 32x32 images are not resized, ImageNet-stem models resize the shorter
side to 232 and centre-crop 224 unless --resize/--image-size say otherwise.
"""

from __future__ import annotations

import functools
import json
import sys
import time
from typing import Iterable

import jax
import jax.numpy as jnp

from thinjax.models.resnet import ResNet


@functools.partial(jax.jit, static_argnames="model")
def eval_step(variables: dict, batch: dict, masks: dict | None = None, *,
              model: ResNet) -> dict[str, jax.Array]:
    """Sums over a batch's real examples: top-1 and top-5 hits, NLL, example count.
    `masks`: channel masks of a masked (pruned, not yet materialised) network."""
    logits = model.apply(variables, batch["image"], train=False, masks=masks)
    labels = batch["label"]
    m = batch["mask"].astype(jnp.float32)
    nll = -jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], axis=1)[:, 0]
    topk = jax.lax.top_k(logits, min(5, logits.shape[-1]))[1]
    hit = topk == labels[:, None]
    return {"top1": jnp.sum(hit[:, 0] * m), "top5": jnp.sum(jnp.any(hit, axis=1) * m),
            "loss": jnp.sum(nll * m), "count": jnp.sum(m)}


def evaluate(model: ResNet, variables: dict, batches: Iterable[dict], total: int | None = None,
             progress: bool = True, mesh=None, masks: dict | None = None) -> dict:
    """{'top1', 'top5' (percent), 'loss' (mean NLL), 'count', 'images_per_s'} over `batches`.

    With a `mesh`, each batch is this process's slice of a global batch, sharded along
    'data'; the sums cover the global batch.
    """
    from tqdm import tqdm
    sums = {"top1": 0.0, "top5": 0.0, "loss": 0.0, "count": 0.0}
    t0 = time.perf_counter()
    bar = tqdm(total=total, unit="img", desc="eval", disable=not progress, file=sys.stderr,
               mininterval=2.0)
    pending = None
    for b in batches:
        n_local = int(b["mask"].sum())
        if mesh is not None:
            from thinjax.train.sharding import global_batch
            b = global_batch(b, mesh)
        out = eval_step(variables, b, masks, model=model)
        if pending is not None:  # fetch the previous batch's sums while this one runs
            for k, v in jax.device_get(pending).items():
                sums[k] += float(v)
        pending = out
        bar.update(n_local)
    if pending is not None:
        for k, v in jax.device_get(pending).items():
            sums[k] += float(v)
    bar.close()
    dt = time.perf_counter() - t0
    n = int(sums["count"])
    if n == 0:
        raise ValueError("evaluation saw no examples")
    return {"top1": 100 * sums["top1"] / n, "top5": 100 * sums["top5"] / n,
            "loss": sums["loss"] / n, "count": n, "images_per_s": n / dt}


def evaluate_checkpoint(checkpoint: str, data: str, split: str = "test", batch_size: int = 500,
                        data_dir: str | None = None, image_size: int | None = None,
                        resize: int | None = None, use_ema: bool = False,
                        progress: bool = True) -> dict:
    from thinjax.checkpoint import load_model
    from thinjax.cost import count
    from thinjax.data import eval_batches, get_source
    plan, variables, meta = load_model(checkpoint, use_ema=use_ema)
    source = get_source(data, data_dir=data_dir)
    if plan.num_classes != source.num_classes:
        raise ValueError(f"the model has {plan.num_classes} classes but {data!r} has "
                         f"{source.num_classes}; evaluate on the dataset it was trained for")
    if image_size is None and source.image_size is None and plan.stem == "imagenet":
        image_size, resize = 224, resize or 232
    size = image_size or source.image_size
    batches = eval_batches(source, split, batch_size, image_size=size, resize=resize)
    res = evaluate(ResNet(plan), variables, batches, source.num_examples(split), progress)
    c = count(plan, size or (224 if plan.stem == "imagenet" else 32))
    return {"checkpoint": checkpoint, "data": data, "split": split, **res,
            "params": c.params, "macs": c.macs, "plan": plan.describe()}


def main(argv=None) -> int:
    import argparse
    ap = argparse.ArgumentParser(prog="python -m thinjax.evaluate", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--split", default="test")
    ap.add_argument("--data-dir", default=None, help="TFDS data directory")
    ap.add_argument("--batch-size", type=int, default=500)
    ap.add_argument("--image-size", type=int, default=None)
    ap.add_argument("--resize", type=int, default=None)
    ap.add_argument("--ema", action="store_true", help="use the EMA weights of a training run")
    ap.add_argument("--json", action="store_true", help="print one JSON object last")
    a = ap.parse_args(argv)
    from thinjax.errors import user_errors
    with user_errors():
        r = evaluate_checkpoint(a.checkpoint, a.data, a.split, a.batch_size, a.data_dir,
                                a.image_size, a.resize, a.ema)
    print(f"{r['checkpoint']} on {r['data']}:{r['split']}: top-1 {r['top1']:.2f}%  "
          f"top-5 {r['top5']:.2f}%  loss {r['loss']:.4f}  ({r['count']} images, "
          f"{r['images_per_s']:.0f} img/s; {r['params']:,} params, {r['macs'] / 1e6:.2f} M MACs)")
    if a.json:
        print(json.dumps(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
