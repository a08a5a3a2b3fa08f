"""Checkpoint -> pruned checkpoint: masks become a genuinely smaller network (the library
behind ``python -m thinjax.convert`` and the study's pruning runs).

`convert` loads a checkpoint, takes its pruning masks or computes new ones (criterion +
target), materialises the smaller network, optionally re-estimates its BN statistics and
measures top-1 before and after, and writes, atomically, a directory with:
  model/        the smaller network (orbax; EMA weights of a training run unless raw)
  plan.json     its channel plan (an example network's description, with the shapes of
                the leaves pruning narrowed: `thinjax.trace.example`)
  config.py     the config that fine-tunes it (``--config.mode=evaluate`` evaluates it): the
                same lines in every output, reading finetune.json (`finetune_config`)
  finetune.json the fine-tune's settings (the source run's recipe) and the provenance
  summary.json  the before/after table, as JSON
A ThinResNet is pruned on its plan's groups, an example network (thinjax.models.examples)
on the groups its trace finds: both through `thinjax.trace.networks`.
"""

from __future__ import annotations

import json
import os

import numpy as np

from thinjax import __version__, fs, settings
from thinjax.checkpoint import export_model
from thinjax.config import base_config
from thinjax.cost import check_input_size
from thinjax.errors import ConfigError, TargetError
from thinjax.evaluation import IMAGENET_RESIZE, evaluate_on
from thinjax.load import load_network
from thinjax.plan import Plan, default_input_size
from thinjax.prune.criteria import needs_data
from thinjax.prune.spec import PruneSpec
from thinjax.trace.example import ExampleNet, network_meta
from thinjax.trace.networks import Network, network

FINETUNE = {  # a short fine-tune for networks imported without a training config
    "train.epochs": 10.0, "train.batch_size": 128, "optim.lr": 0.04, "optim.lr_batch": 128,
    "optim.warmup_epochs": 0.5, "optim.weight_decay": 5e-5, "optim.nesterov": True,
    "train.mixup_alpha": 0.0, "train.cutmix_alpha": 0.0, "data.trivial_augment": False,
    "data.random_erasing": 0.0, "ema.decay": 0.999, "ema.every": 1, "ema.adjust": False,
    "train.eval_every_epochs": 1.0, "train.log_every": 50, "train.checkpoint_every": 500,
}


def stage_widths(plan: Plan | ExampleNet) -> list[str]:
    """Per stage: 'residual width / mean inner width (blocks kept)' (none for an example
    network: its summary lists its groups)."""
    if isinstance(plan, ExampleNet):
        return []
    out = []
    for i, s in enumerate(plan.stages):
        live = [b for b in s.blocks if not b.removed]
        inner = np.mean([np.mean(b.inner) for b in live]) if live else 0.0
        out.append(f"stage{i + 1} {s.width}/{inner:.1f} ({len(live)}/{len(s.blocks)} blocks)")
    return out


def convert(checkpoint: str, output: str, *, spec: PruneSpec | None = None,
            data: str | None = None, data_dir: str | None = None, split: str = "test",
            train_split: str = "train", batch_size: int = 500, input_size: int | None = None,
            use_ema: bool = True, overwrite: bool = False, recalibrate_bn: int = 0,
            evaluate_before: bool = True, seed: int = 0) -> dict:
    """Prunes `checkpoint` into the directory `output` (see the module docstring) and
    returns the summary. `spec` (its criterion, scoring, allocation, target and round_to;
    not its schedule) prunes anew, on top of the checkpoint's own masks; without it the
    checkpoint's own masks are materialised."""
    output = os.path.abspath(output)
    check_output(output, checkpoint, overwrite)
    _check_args(spec, data, recalibrate_bn, input_size)
    plan, variables, meta = load_network(checkpoint, use_ema=use_ema)
    size = input_size or _input_size(plan)
    net = network(plan, input_size=size)
    if spec is not None:
        net.check_target(meta.get("masks"), spec.target_kind, spec.target)
    batches = lambda n: _train_batches(data, data_dir, train_split, size, n)  # noqa: E731
    masks, how = _masks(checkpoint, net, variables, meta, spec, batches, seed)
    small = net.small(masks)
    new_plan = small.desc
    new_vars = {k: net.slice_tree(masks, v, small) for k, v in variables.items()}
    if spec is not None and new_plan == net.small(meta.get("masks") or
                                                  net.init_masks()).desc:
        raise TargetError(f"--target_kind={spec.target_kind} --target={spec.target:g} removes "
                          "no channel (rounding keeps every group whole); give a lower target")
    pruned_vars = new_vars
    if recalibrate_bn:
        new_vars = small.recalibrate(new_vars, batches(128), recalibrate_bn)
        how += f", BN recalibrated on {recalibrate_bn} batches"
    summary = _summary(checkpoint, output, how, size, use_ema and meta.get("has_ema"),
                       (net, small), masks)
    if data:
        ev = lambda p, v, m=None: _evaluate(p, v, data, data_dir, split, batch_size, size,  # noqa: E731
                                            m)
        _measure(summary, ev, (plan, variables), (new_plan, new_vars, pruned_vars),
                 masks if meta.get("masks") is not None and spec is None else None,
                 evaluate_before, recalibrate_bn)
        summary["data"] = f"{data}:{split}"
    _write(output, new_plan, new_vars, plan, summary, _overrides(meta, new_plan, data, size))
    return summary


def _check_args(spec: PruneSpec | None, data, recalibrate_bn, input_size) -> None:
    """Refuses inconsistent arguments before anything is loaded."""
    if (spec is not None and needs_data(spec.criterion) or recalibrate_bn) and not data:
        criterion = spec.criterion if spec is not None else None
        raise ConfigError(f"criterion {criterion!r} and --recalibrate_bn need --data "
                          "(training images), e.g. --data=sample:cifar10")
    check_input_size(input_size)


def check_output(output: str, source: str, overwrite: bool) -> None:
    """Refuses an output that is, lies inside or contains `source`, and an existing one
    unless `overwrite` and thinjax wrote it (`thinjax.fs.check_replaceable`)."""
    fs.check_replaceable(output, [source], overwrite)


def _input_size(plan: Plan | ExampleNet) -> int:
    return plan.input_size if isinstance(plan, ExampleNet) else default_input_size(plan)


def _masks(checkpoint, net: Network, variables, meta, spec, batches, seed):
    """(masks, description): new masks from `spec` (on top of the checkpoint's own),
    or the checkpoint's masks."""
    masks = meta.get("masks")
    if spec is not None:
        alloc = net.compute_masks(
            variables, spec, spec.goal(), masks=masks, seed=seed,
            batches=batches(64) if needs_data(spec.criterion) else None)
        return alloc.masks, (f"{spec.criterion} {spec.allocation} to "
                             f"{spec.target_kind}={spec.target:g}")
    if masks is None and meta.get("materialized"):  # a pruning run that ended materialised
        return net.init_masks(), "the pruning run's materialised network (no masks left)"
    if masks is None:
        raise ConfigError(f"{checkpoint} has no pruning masks; give a criterion and a target, "
                          "e.g. --criterion=l1 --target_kind=macs_fraction --target=0.5")
    return masks, "the checkpoint's masks"


def _summary(checkpoint, output, how, size, ema, nets: tuple[Network, Network],
             masks: dict) -> dict:
    (net, small), plan, new_plan = nets, nets[0].desc, nets[1].desc
    before, after = net.cost(size), small.cost(size)
    out = {"source": os.path.abspath(checkpoint) if os.path.exists(checkpoint)
           else checkpoint, "output": output, "pruning": how, "input_size": size,
           "weights": "ema" if ema else "raw",
           "before": {"params": before.params, "macs": before.macs,
                      "stages": stage_widths(plan), "plan": plan.to_dict()},
           "after": {"params": after.params, "macs": after.macs,
                     "stages": stage_widths(new_plan), "plan": new_plan.to_dict()}}
    if isinstance(plan, ExampleNet):  # the traced groups: channels kept / size
        out["after"]["groups"] = {n: [int(np.sum(np.asarray(m) > 0)), int(np.size(m))]
                                  for n, m in masks.items()}
    return out


def _evaluate(plan, variables, data, data_dir, split, batch_size, size, masks=None) -> dict:
    from thinjax.data import get_source  # tf.data: only when something is measured
    resize = IMAGENET_RESIZE if getattr(plan, "stem", "") == "imagenet" and size == 224 \
        else None
    if masks is not None and not network(plan, input_size=size).masks_in_apply:
        net = network(plan, input_size=size)   # a traced network: masks zero its variables
        variables, masks = {k: net.mask_tree(v, masks) for k, v in variables.items()}, None
    return evaluate_on(plan, variables, get_source(data, data_dir=data_dir), split,
                       batch_size, data=data, image_size=size, resize=resize, masks=masks)


def _measure(summary, ev, dense, pruned, own_masks, evaluate_before, recalibrated) -> None:
    """Top-1/top-5 after (and before) pruning into `summary`; with BN recalibration also
    before it; for a masked run, the masked network's top-1 (equal to the materialised)."""
    plan, variables = dense
    new_plan, new_vars, pruned_vars = pruned
    todo = {"after": (new_plan, new_vars)}
    if evaluate_before:
        todo["before"] = (plan, variables)
    for k, (p, v) in todo.items():
        r = ev(p, v)
        summary[k].update(top1=r["top1"], top5=r["top5"])
    if recalibrated:
        summary["after"]["top1_before_recalibration"] = ev(new_plan, pruned_vars)["top1"]
    if own_masks is not None:
        summary["masked_top1"] = ev(plan, variables, {k: np.asarray(x) for k, x in
                                                      own_masks.items()})["top1"]


def _write(output, new_plan, new_vars, plan, summary, overrides) -> None:
    """Writes the output directory beside its final place, then renames it: all or
    nothing (`thinjax.fs.atomic_dir`)."""
    with fs.writing(output), fs.atomic_dir(output) as tmp:
        export_model(os.path.join(tmp, "model"), new_plan, new_vars,
                     {"source": summary["source"], "pruning": summary["pruning"],
                      **network_meta(plan, "dense_")})
        new_plan.save(os.path.join(tmp, "plan.json"))
        with open(os.path.join(tmp, "finetune.json"), "w") as f:
            json.dump({"overrides": overrides, "source": summary["source"],
                       "pruning": summary["pruning"], "thinjax": __version__}, f, indent=1)
        with open(os.path.join(tmp, "config.py"), "w") as f:
            f.write(CONFIG_PY)
        with open(os.path.join(tmp, "summary.json"), "w") as f:
            json.dump(summary, f, indent=1)


# the output's config.py: the same few lines in every output, no values written into code;
# what the fine-tune needs is in finetune.json beside it
CONFIG_PY = '''"""Fine-tune (or evaluate) the pruned network in this folder, made by thinjax's prune
command (python -m thinjax.convert): the settings are this folder's finetune.json,
read by thinjax.conversion.finetune_config; summary.json has the before/after table.

Command:  python -m thinjax.main --config=THIS_DIR/config.py --workdir=DIR
          (evaluate only: add --config.mode=evaluate)
Expected: summary.json's "after" (top-1 right after pruning, when measured).
"""

import os

from thinjax.conversion import finetune_config


def get_config():
    return finetune_config(os.path.dirname(os.path.abspath(__file__)))
'''


def finetune_config(output: str):
    """The config that fine-tunes the network in the prune command's `output` folder: the
    schema's defaults, the overrides recorded in its finetune.json (the source run's own
    recipe, or a short fine-tune), its plan.json and its model as ``init_from``."""
    try:
        with open(os.path.join(output, "finetune.json")) as f:
            recorded = json.load(f)
    except (OSError, ValueError) as e:
        raise ConfigError(f"{output}/finetune.json cannot be read ({e}): the folder is not a "
                          "complete output of the prune command; prune again") from e
    c = base_config()
    for key, v in recorded["overrides"].items():
        sec, k = key.split(".", 1)
        c[sec][k] = tuple(v) if isinstance(v, list) else v
    c.model.plan_file = os.path.join(output, "plan.json")
    c.init_from = os.path.join(output, "model")
    return c


def _overrides(meta: dict, plan: Plan, data: str | None, input_size: int) -> dict:
    """Config values for the fine-tune: the source run's own config when it has one."""
    out = {}
    src_cfg = meta.get("config")
    if isinstance(src_cfg, dict):
        base = base_config()
        for sec in ("data", "train", "optim", "ema", "model"):
            for k, v in (src_cfg.get(sec) or {}).items():
                model_key = sec == "model" and k in ("plan_file", "name", "width", "base_width",
                                                     "example", "width_mult")
                if k in base[sec] and not model_key and v != base[sec][k] and v is not None:
                    out[f"{sec}.{k}"] = tuple(v) if isinstance(v, list) else v
        out["train.epochs"] = min(float(src_cfg.get("train", {}).get("epochs", 10)), 10.0)
        out["train.total_steps"] = 0
    else:
        out.update(FINETUNE)
    out["model.num_classes"] = plan.num_classes
    if data:
        out["data.name"] = data
    elif "data.name" not in out:
        out["data.name"] = "cifar10" if getattr(plan, "stem", "cifar") == "cifar" \
            else "imagenet2012"
    out["data.image_size"] = input_size
    return out


def _train_batches(data, data_dir, split, size, batch_size):
    """Shuffled training batches, flipped and cropped only (Taylor scores, BN statistics)."""
    from thinjax.data import get_source, train_batches  # tf.data
    cfg = base_config().data
    cfg.name, cfg.train_split, cfg.image_size = data, split, size
    cfg.trivial_augment, cfg.random_erasing, cfg.cache = False, 0.0, "none"
    cfg.shuffle_buffer, cfg.crop_padding = 5_000, 0
    if size > 64:
        cfg.augment, cfg.rrc_scale_min = "imagenet", 0.35
    source = get_source(data, data_dir=data_dir)
    n = source.num_examples(split) // batch_size
    yield from train_batches(source, settings.data_settings(cfg), batch_size, seed=0,
                             start_step=0, steps_per_epoch=n)
