"""Evaluation, the one path every caller takes: top-1, top-5 and mean NLL, every example
counted once.

`evaluate` runs a model over batches (this process's slices of global batches when a
`mesh` is given); `evaluate_on` builds the batches of a dataset split with the release's
preprocessing and the view a plan wants (`eval_view`). The training loop, `thinjax.main`,
`thinjax.evaluate`, `thinjax.convert` and `thinjax.study` all call these.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterable

import jax
import jax.numpy as jnp

from thinjax import split_cache
from thinjax.errors import DataError
from thinjax.load import load_network
from thinjax.models import fold
from thinjax.models.resnet import ResNet
from thinjax.plan import Plan, default_input_size
from thinjax.progress import process_seconds, progress_bar
from thinjax.sharding import global_batch
from thinjax.trace.example import ExampleNet
from thinjax.trace.networks import network

IMAGENET_RESIZE = 232  # the release: Resize(232) then CenterCrop(224)


def inference_logits(model: ResNet, variables: dict, images, masks: dict | None = None):
    """``model.apply(variables, images, train=False, masks=masks)``: for a float32 model
    with BatchNorm folded into the convolutions (`thinjax.models.fold`: the same logits to
    float32 rounding, each convolution one oneDNN primitive with its bias, residual add and
    ReLU where oneDNN computes the convolutions); other dtypes run the model as it is."""
    if not isinstance(model, ResNet) or jnp.dtype(model.dtype) != jnp.float32:
        return model.apply(variables, images, train=False,
                           **({} if masks is None else {"masks": masks}))
    folded = fold.fold(model.plan, variables, model.bn_epsilon, masks)
    return fold.forward(model.plan, folded, images, model.conv_impl)


@functools.partial(jax.jit, static_argnames="model")
def eval_step(variables: dict, batch: dict, masks: dict | None = None, *,
              model: ResNet) -> dict[str, jax.Array]:
    """Sums over a batch's real examples: top-1 and top-5 hits, NLL, example count.
    `masks`: channel masks of a masked (pruned, not yet materialised) network."""
    logits = inference_logits(model, variables, batch["image"], masks)
    labels = batch["label"]
    m = batch["mask"].astype(jnp.float32)
    # the NLL of thinjax.optim.cross_entropy against one-hot targets, written out here:
    # evaluation does not import the optimizer module (optax: start-up of every evaluation)
    onehot = jax.nn.one_hot(labels, logits.shape[-1])
    nll = -jnp.sum(onehot * jax.nn.log_softmax(logits.astype(jnp.float32)), axis=-1)
    topk = jax.lax.top_k(logits, min(5, logits.shape[-1]))[1]
    hit = topk == labels[:, None]
    return {"top1": jnp.sum(hit[:, 0] * m), "top5": jnp.sum(jnp.any(hit, axis=1) * m),
            "loss": jnp.sum(nll * m), "count": jnp.sum(m)}


def evaluate(model: ResNet, variables: dict, batches: Iterable[dict], total: int | None = None,
             progress: bool = True, mesh=None, masks: dict | None = None) -> dict:
    """{'top1', 'top5' (percent), 'loss' (mean NLL), 'count', 'images_per_s',
    'startup_s', 'startup_cpu_s', 'first_batch_s', 'first_batch_cpu_s'} over `batches`;
    'startup_s': seconds from the process's start to the moment the first batch starts
    computing (handed to the device: imports, loading, the input, compiling; None off
    Linux), 'first_batch_s': to the first batch's result (start-up and that batch's
    compute); the '_cpu_s' ones: the CPU seconds the process (all its threads) had spent
    by then (on a busy machine, the part that is the process's own).

    With a `mesh`, each batch is this process's slice of a global batch, sharded along
    'data'; the sums cover the global batch.
    """
    sums = {"top1": 0.0, "top5": 0.0, "loss": 0.0, "count": 0.0}
    t0 = time.perf_counter()
    bar = progress_bar(total, "img", "eval", progress, mininterval=2.0)
    pending, first, first_cpu, start, start_cpu = None, None, None, None, None
    for b in batches:
        n_local = int(b["mask"].sum())
        if mesh is not None:
            b = global_batch(b, mesh)
        out = eval_step(variables, b, masks, model=model)
        if pending is not None:  # fetch the previous batch's sums while this one runs
            _accumulate(sums, pending)
        else:  # dispatched (JAX computes asynchronously): start-up ends here
            start, start_cpu = process_seconds(), round(time.process_time(), 3)
            jax.block_until_ready(out)
            first, first_cpu = process_seconds(), round(time.process_time(), 3)
        pending = out
        bar.update(n_local)
    if pending is not None:
        _accumulate(sums, pending)
    bar.close()
    n = int(sums["count"])
    if n == 0:
        raise DataError("evaluation saw no examples: the split is empty")
    return {"top1": 100 * sums["top1"] / n, "top5": 100 * sums["top5"] / n,
            "loss": sums["loss"] / n, "count": n,
            "images_per_s": n / (time.perf_counter() - t0), "startup_s": start,
            "startup_cpu_s": start_cpu, "first_batch_s": first, "first_batch_cpu_s": first_cpu}


def _accumulate(sums: dict, out: dict) -> None:
    for k, v in jax.device_get(out).items():
        sums[k] += float(v)


def check_classes(plan: Plan, source, data: str) -> None:
    """Refuses data whose class count is not the model's."""
    if plan.num_classes != source.num_classes:
        raise DataError(f"the model has {plan.num_classes} classes but data {data!r} has "
                        f"{source.num_classes}; evaluate on the dataset it was trained for, "
                        "or set config.model.num_classes")


def _input_size(plan: Plan | ExampleNet) -> int:
    return plan.input_size if isinstance(plan, ExampleNet) else default_input_size(plan)


def eval_view(plan: Plan | ExampleNet, source_size: int | None, image_size: int | None = None,
              resize: int | None = None) -> tuple[int | None, int | None]:
    """(crop size, shorter-side resize) for evaluation. Explicit values win; otherwise
    images of a fixed size (CIFAR) are used as they are, and variable-size images for an
    ImageNet-stem model get the release's Resize(232) + CenterCrop(224) (an example network
    its own input size)."""
    if isinstance(plan, ExampleNet) and image_size is None and source_size is None:
        return plan.input_size, resize
    if image_size is None and source_size is None and plan.stem == "imagenet":
        return default_input_size(plan), resize or IMAGENET_RESIZE
    return image_size or source_size, resize


def _model(plan: Plan | ExampleNet):
    return plan.module() if isinstance(plan, ExampleNet) else ResNet(plan)


def _batches(source, split: str, batch_size: int, size: int | None, resize: int | None,
             keep: split_cache.Entry | None):
    """The evaluation batches of `source`:`split` through tf.data; with `keep` (the view's
    entry in the evaluation-input cache) the inputs are also kept there, when they fit."""
    from thinjax.data import EvalBatches  # tf.data: loaded only when data is evaluated
    count = source.num_examples(split)
    if keep is None or (keep.size, keep.resize) != (size, resize) \
            or keep.nbytes(count) > split_cache.max_bytes():
        return iter(EvalBatches(source, split, batch_size, image_size=size, resize=resize))
    raw = EvalBatches(source, split, batch_size, image_size=size, resize=resize,
                      normalized=False)
    return split_cache.fill(keep, raw, count, batch_size)


def evaluate_on(plan: Plan | ExampleNet, variables: dict, source, split: str,
                batch_size: int, *, data: str = "", image_size: int | None = None,
                resize: int | None = None, masks: dict | None = None,
                model: ResNet | None = None, progress: bool = True,
                keep: split_cache.Entry | None = None) -> dict:
    """Evaluates `variables` on a split of `source` (a thinjax.data Source), with the view
    `eval_view` picks; the result also names the crop size it used (`input_size`).
    `plan`: a ThinResNet's plan or an example network's description. `keep`: the split's
    entry in the evaluation-input cache, filled by this evaluation (`thinjax.split_cache`)."""
    check_classes(plan, source, data or source.name)
    size, resize = eval_view(plan, source.image_size, image_size, resize)
    batches = _batches(source, split, batch_size, size, resize, keep)
    res = evaluate(model or _model(plan), variables, batches, source.num_examples(split),
                   progress, masks=masks)
    return {**res, "input_size": size or _input_size(plan)}


def evaluate_data(plan: Plan | ExampleNet, variables: dict, data: str, split: str = "test",
                  batch_size: int = 500, data_dir: str | None = None,
                  image_size: int | None = None, resize: int | None = None,
                  progress: bool = True, load_tensorflow: Callable[[], object] | None = None
                  ) -> dict:
    """`evaluate_on` the split of `data` (`thinjax.data.get_source`), or on its inputs kept
    in the evaluation-input cache (`thinjax.split_cache`: TensorFlow is then not imported;
    an evaluation that reads the images keeps them there). `load_tensorflow`: called before
    anything imports TensorFlow (the commands import it without Keras)."""
    keep = split_cache.entry(data, split, functools.partial(
        eval_view, plan, image_size=image_size, resize=resize))
    kept = split_cache.read(keep) if keep is not None else None
    if kept is not None:
        check_classes(plan, keep.folder, data)
        res = evaluate(_model(plan), variables, split_cache.batches(kept, batch_size),
                       len(kept["label"]), progress)
        return {**res, "input_size": keep.size}
    if load_tensorflow is not None:
        load_tensorflow()
    from thinjax.data import get_source  # loads TensorFlow: only when images are read
    return evaluate_on(plan, variables, get_source(data, data_dir=data_dir), split,
                       batch_size, data=data, image_size=image_size, resize=resize,
                       progress=progress, keep=keep)


def evaluate_checkpoint(checkpoint: str, data: str, split: str = "test", batch_size: int = 500,
                        data_dir: str | None = None, image_size: int | None = None,
                        resize: int | None = None, use_ema: bool = False,
                        progress: bool = True,
                        load_tensorflow: Callable[[], object] | None = None) -> dict:
    """Loads `checkpoint` and evaluates it on `data`:`split` (`evaluate_data`)."""
    plan, variables, _ = load_network(checkpoint, use_ema=use_ema)
    res = evaluate_data(plan, variables, data, split, batch_size, data_dir, image_size,
                        resize, progress, load_tensorflow)
    c = network(plan, input_size=res["input_size"]).cost(res["input_size"])
    return {"checkpoint": checkpoint, "data": data, "split": split, **res,
            "params": c.params, "macs": c.macs, "plan": plan.describe()}
