"""Checkpoint -> pruned checkpoint: masks become a genuinely smaller network.

    python -m thinjax.convert --checkpoint=SRC --output=DST [--data=DATASET] [--json]
    python -m thinjax.convert --checkpoint=model.pt --output=DST \\
        --criterion=l1 --allocation=global --target-kind=macs --target=31.5e6

SRC: a pruning run's workdir or checkpoint (its masks are used), or any unmasked thinjax
or PyTorch checkpoint, pruned here by ``--criterion`` and ``--target-kind/--target`` (also
applied on top of a run's masks). DST (new; ``--overwrite`` to replace) receives, written
atomically:
  model/        the smaller network (orbax; EMA weights of a training run unless --raw)
  plan.json     its channel plan
  config.py     the config that fine-tunes it:  python -m thinjax.main --config=DST/config.py
                --workdir=W  (add --config.mode=evaluate to evaluate it instead)
  summary.json  the before/after table below, as JSON
The table gives params, MACs, per-stage widths, and top-1 with ``--data``.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile

import numpy as np

from thinjax.plan import Plan

FINETUNE = {  # a short fine-tune for networks imported without a training config
    "train.epochs": 10.0, "train.batch_size": 128, "optim.lr": 0.04, "optim.lr_batch": 128,
    "optim.warmup_epochs": 0.5, "optim.weight_decay": 5e-5, "optim.nesterov": True,
    "train.mixup_alpha": 0.0, "train.cutmix_alpha": 0.0, "data.trivial_augment": False,
    "data.random_erasing": 0.0, "ema.decay": 0.999, "ema.every": 1, "ema.adjust": False,
    "train.eval_every_epochs": 1.0, "train.log_every": 50, "train.checkpoint_every": 500,
}


def stage_widths(plan: Plan) -> list[str]:
    """Per stage: 'residual width / mean inner width (blocks kept)'."""
    out = []
    for i, s in enumerate(plan.stages):
        live = [b for b in s.blocks if not b.removed]
        inner = np.mean([np.mean(b.inner) for b in live]) if live else 0.0
        out.append(f"stage{i + 1} {s.width}/{inner:.1f} ({len(live)}/{len(s.blocks)} blocks)")
    return out


def _evaluate(plan, variables, data, data_dir, split, batch_size, size, resize, masks=None):
    from thinjax.data import eval_batches, get_source
    from thinjax.evaluate import evaluate
    from thinjax.models.resnet import ResNet
    source = get_source(data, data_dir=data_dir)
    if source.num_classes != plan.num_classes:
        raise ValueError(f"the model has {plan.num_classes} classes but {data!r} has "
                         f"{source.num_classes}")
    b = eval_batches(source, split, batch_size, image_size=size, resize=resize)
    return evaluate(ResNet(plan), variables, b, source.num_examples(split), progress=True,
                    masks=masks)


def _config_py(src: str, plan: Plan, overrides: dict, summary: dict) -> str:
    lines = [f"    c.{k} = {v!r}" for k, v in overrides.items()]
    after = summary["after"]
    exp = (f"top-1 {after['top1']:.2f}% right after pruning ({summary['data']}), before "
           "fine-tuning" if "top1" in after else "not measured (convert with --data)")
    return f'''"""Fine-tune (or evaluate) the pruned network made by thinjax.convert from
{src}.

Command:  python -m thinjax.main --config=THIS_DIR/config.py --workdir=DIR
          (evaluate only: add --config.mode=evaluate)
Expected: {exp}.
Cost:     {after['params']:,} params, {after['macs'] / 1e6:.2f} M MACs at {summary['input_size']}px
          ({plan.describe()}); fine-tuning costs what training this plan costs per epoch.
"""

import os

from thinjax.config import base_config

HERE = os.path.dirname(os.path.abspath(__file__))


def get_config():
    c = base_config()
{chr(10).join(lines)}
    c.model.plan_file = os.path.join(HERE, "plan.json")
    c.init_from = os.path.join(HERE, "model")
    return c
'''


def _overrides(meta: dict, plan: Plan, data: str | None, input_size: int) -> dict:
    """Config values for the fine-tune: the source run's own config when it has one."""
    from thinjax.config import base_config
    out = {}
    src_cfg = meta.get("config")
    if isinstance(src_cfg, dict):
        base = base_config()
        for sec in ("data", "train", "optim", "ema", "model"):
            for k, v in (src_cfg.get(sec) or {}).items():
                if k in base[sec] and k not in ("plan_file", "name", "width", "base_width") \
                        and v != base[sec][k] and v is not None:
                    out[f"{sec}.{k}"] = tuple(v) if isinstance(v, list) else v
        out["train.epochs"] = min(float(src_cfg.get("train", {}).get("epochs", 10)), 10.0)
        out["train.total_steps"] = 0
    else:
        out.update(FINETUNE)
    out["model.num_classes"] = plan.num_classes
    if data:
        out["data.name"] = data
    elif "data.name" not in out:
        out["data.name"] = "cifar10" if plan.stem == "cifar" else "imagenet2012"
    out["data.image_size"] = input_size
    return out


def convert(checkpoint: str, output: str, *, criterion: str | None = None,
            target_kind: str | None = None, target: float | None = None,
            allocation: str = "global", reduce: str = "mean", normalization: str = "mean",
            round_to: int = 1, allow_block_removal: bool = False, group_ratios=(),
            data: str | None = None, data_dir: str | None = None, split: str = "test",
            train_split: str = "train", batch_size: int = 500, input_size: int | None = None,
            use_ema: bool = True, overwrite: bool = False, taylor_batches: int = 8,
            recalibrate_bn: int = 0, evaluate_before: bool = True, seed: int = 0) -> dict:
    import ml_collections
    from thinjax.checkpoint import export_model, load_model
    from thinjax.cost import count
    from thinjax.prune.allocate import Target
    from thinjax.prune.materialize import materialize
    from thinjax.prune.pruner import compute_masks

    output = os.path.abspath(output)
    if os.path.exists(output) and not overwrite:
        raise FileExistsError(f"{output} exists; choose another --output or pass --overwrite")
    plan, variables, meta = load_model(checkpoint, use_ema=use_ema)
    masks = meta.get("masks")
    size = input_size or (224 if plan.stem == "imagenet" else 32)
    resize = 232 if plan.stem == "imagenet" and size == 224 else None
    if (target_kind is None) != (target is None):
        raise ValueError("give both --target-kind and --target (or neither, to materialise "
                         "the checkpoint's own masks)")
    if target_kind is not None:
        if criterion == "taylor" and not data:
            raise ValueError("criterion 'taylor' needs --data (training batches)")
        cfg = ml_collections.ConfigDict(dict(
            criterion=criterion or "l1", reduce=reduce, allocation=allocation,
            normalization=normalization, round_to=round_to,
            allow_block_removal=allow_block_removal, group_ratios=tuple(group_ratios),
            taylor_batches=taylor_batches))
        batches = None
        if criterion == "taylor":
            batches = _train_batches(data, data_dir, train_split, size, 64)
        from thinjax.models.resnet import ResNet
        alloc = compute_masks(plan, variables, cfg, Target(target_kind, float(target)),
                              masks=masks, model=ResNet(plan), batches=batches,
                              input_size=size, seed=seed)
        masks, how = alloc.masks, f"{cfg.criterion} {allocation} to {target_kind}={target:g}"
    elif masks is None:
        raise ValueError(f"{checkpoint} has no pruning masks; give a criterion and a target, "
                         "e.g. --criterion=l1 --target-kind=macs_fraction --target=0.5")
    else:
        how = "the checkpoint's masks"
    new_plan, new_vars = materialize(plan, masks, variables)
    pruned_vars = new_vars
    if recalibrate_bn:
        if not data:
            raise ValueError("--recalibrate-bn needs --data (training images)")
        from thinjax.models.resnet import ResNet
        from thinjax.prune.recalibrate import recalibrate_bn as recal
        new_vars = recal(ResNet(new_plan), new_vars, _train_batches(
            data, data_dir, train_split, size, 128), recalibrate_bn)
        how += f", BN recalibrated on {recalibrate_bn} batches"
    before, after = count(plan, size), count(new_plan, size)
    summary = {"source": os.path.abspath(checkpoint) if os.path.exists(checkpoint)
               else checkpoint, "output": output, "pruning": how, "input_size": size,
               "weights": "ema" if use_ema and meta.get("has_ema") else "raw",
               "before": {"params": before.params, "macs": before.macs,
                          "stages": stage_widths(plan), "plan": plan.to_dict()},
               "after": {"params": after.params, "macs": after.macs,
                         "stages": stage_widths(new_plan), "plan": new_plan.to_dict()}}
    if data:
        summary["data"] = f"{data}:{split}"
        todo = {"after": (new_plan, new_vars, None)}
        if evaluate_before:
            todo["before"] = (plan, variables, None)
        for k, (p, v, m) in todo.items():
            r = _evaluate(p, v, data, data_dir, split, batch_size, size, resize, m)
            summary[k].update(top1=r["top1"], top5=r["top5"])
        if recalibrate_bn:
            r = _evaluate(new_plan, pruned_vars, data, data_dir, split, batch_size, size,
                          resize)
            summary["after"]["top1_before_recalibration"] = r["top1"]
        if masks is not None and meta.get("masks") is not None and target_kind is None:
            summary["masked_top1"] = _evaluate(plan, variables, data, data_dir, split,
                                               batch_size, size, resize,
                                               {k: np.asarray(x) for k, x in
                                                masks.items()})["top1"]

    # -- write DST atomically -------------------------------------------------------------
    parent = os.path.dirname(output)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=os.path.basename(output) + ".tmp-", dir=parent)
    try:
        export_model(os.path.join(tmp, "model"), new_plan, new_vars,
                     {"source": summary["source"], "pruning": how,
                      "dense_plan": plan.to_dict()})
        new_plan.save(os.path.join(tmp, "plan.json"))
        with open(os.path.join(tmp, "config.py"), "w") as f:
            f.write(_config_py(summary["source"], new_plan,
                               _overrides(meta, new_plan, data, size), summary))
        with open(os.path.join(tmp, "summary.json"), "w") as f:
            json.dump(summary, f, indent=1)
        if os.path.exists(output):
            shutil.rmtree(output)
        os.replace(tmp, output)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return summary


def _train_batches(data, data_dir, split, size, batch_size):
    """Shuffled training batches, flipped and cropped only (Taylor scores, BN statistics)."""
    from thinjax.config import base_config
    from thinjax.data import get_source
    from thinjax.data.pipeline import train_batches
    cfg = base_config().data
    cfg.name, cfg.train_split, cfg.image_size = data, split, size
    cfg.trivial_augment, cfg.random_erasing, cfg.cache = False, 0.0, "none"
    cfg.shuffle_buffer, cfg.crop_padding = 5_000, 0
    if size > 64:
        cfg.augment, cfg.rrc_scale_min = "imagenet", 0.35
    source = get_source(data, data_dir=data_dir)
    n = source.num_examples(split) // batch_size
    yield from train_batches(source, cfg, batch_size, seed=0, start_step=0, steps_per_epoch=n)


def table(summary: dict) -> str:
    b, a = summary["before"], summary["after"]
    rows = [("", "before", "after", "after/before"),
            ("params", f"{b['params']:,}", f"{a['params']:,}", f"{a['params'] / b['params']:.3f}"),
            ("MACs", f"{b['macs'] / 1e6:.2f} M", f"{a['macs'] / 1e6:.2f} M",
             f"{a['macs'] / b['macs']:.3f}")]
    for sb, sa in zip(b["stages"], a["stages"]):
        name = sb.split()[0]
        rows.append((f"{name} width/inner", sb.split(" ", 1)[1], sa.split(" ", 1)[1], ""))
    if "top1_before_recalibration" in a:
        rows.append(("top-1 before BN recalibration", "", f"{a['top1_before_recalibration']:.2f}%",
                     ""))
    if "top1" in a and "top1" in b:
        rows.append(("top-1", f"{b['top1']:.2f}%", f"{a['top1']:.2f}%",
                     f"{a['top1'] - b['top1']:+.2f}"))
    w = [max(len(r[i]) for r in rows) for i in range(4)]
    return "\n".join("  ".join(c.ljust(w[i]) for i, c in enumerate(r)) for r in rows)


def main(argv=None) -> int:
    import argparse
    ap = argparse.ArgumentParser(prog="python -m thinjax.convert", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True, help="workdir, checkpoint or .pt file")
    ap.add_argument("--output", required=True, help="new directory for the pruned network")
    ap.add_argument("--criterion", default=None,
                    help="l1 | l2 | bn_scale | taylor | random (default l1)")
    ap.add_argument("--target-kind", default=None,
                    help="ratio | params | macs | params_fraction | macs_fraction")
    ap.add_argument("--target", type=float, default=None)
    ap.add_argument("--allocation", default="global", help="global | uniform | explicit")
    ap.add_argument("--group-ratio", action="append", default=[], metavar="REGEX=FRACTION",
                    help="explicit allocation: fraction removed from matching groups")
    ap.add_argument("--reduce", default="mean", help="group score reduction: mean|sum|max")
    ap.add_argument("--normalization", default="mean", help="mean | max | sum | none")
    ap.add_argument("--round-to", type=int, default=1)
    ap.add_argument("--allow-block-removal", action="store_true")
    ap.add_argument("--data", default=None, help="dataset to measure top-1 before/after")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--split", default="test")
    ap.add_argument("--batch-size", type=int, default=500)
    ap.add_argument("--input-size", type=int, default=None)
    ap.add_argument("--recalibrate-bn", type=int, default=0, metavar="N",
                    help="re-estimate BN statistics on N training batches after pruning")
    ap.add_argument("--raw", action="store_true", help="raw weights, not the run's EMA")
    ap.add_argument("--overwrite", action="store_true")
    ap.add_argument("--json", action="store_true", help="print one JSON object last")
    a = ap.parse_args(argv)
    from thinjax.errors import user_errors
    with user_errors():
        ratios = []
        for gr in a.group_ratio:
            if "=" not in gr:
                raise ValueError(f"--group-ratio {gr!r}: expected REGEX=FRACTION")
            k, v = gr.rsplit("=", 1)
            ratios.append((k, float(v)))
        s = convert(a.checkpoint, a.output, criterion=a.criterion, target_kind=a.target_kind,
                    target=a.target, allocation=a.allocation, reduce=a.reduce,
                    normalization=a.normalization, round_to=a.round_to,
                    allow_block_removal=a.allow_block_removal, group_ratios=ratios,
                    data=a.data, data_dir=a.data_dir, split=a.split,
                    batch_size=a.batch_size, input_size=a.input_size, use_ema=not a.raw,
                    overwrite=a.overwrite, recalibrate_bn=a.recalibrate_bn)
    print(f"pruned {s['source']} ({s['pruning']}) -> {s['output']}")
    print(table(s))
    print(f"fine-tune: python -m thinjax.main --config={s['output']}/config.py --workdir=DIR")
    if a.json:
        print(json.dumps(s))
    return 0


if __name__ == "__main__":
    sys.exit(main())
