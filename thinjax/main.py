"""thinjax's main command.

    python -m thinjax.main --config=configs/thin_r20_cifar10.py --workdir=DIR [--config.x=y ...]

Modes (config.mode):
  * ``train``: train the configured ThinResNet (from scratch, or from ``init_from``), then
    evaluate raw and EMA weights. Rerunning with the same workdir resumes.
  * ``evaluate``: evaluate ``init_from`` (a thinjax checkpoint or workdir, or an imported
    PyTorch/safetensors/npz file; its plan must match the configured one) on ``data``.
DIR receives config.json, plan.json and results.json (see thinjax.train.loop for the rest).
"""

from __future__ import annotations

import json
import os

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "config file (configs/*.py)",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "output directory; rerun to resume")
_JSON = flags.DEFINE_bool("json", False, "print one JSON object as the last line")


def plan_from_config(cfg):
    from thinjax.plan import Plan, plan_from_width
    if cfg.model.plan_file:
        return Plan.load(cfg.model.plan_file)
    return plan_from_width(cfg.model.name, cfg.model.width, cfg.model.num_classes,
                           cfg.model.base_width)


def model_from_config(cfg, plan):
    from thinjax.models.resnet import build_model
    return build_model(plan, dtype=cfg.model.dtype, zero_init_last_bn=cfg.model.zero_init_last_bn,
                       bn_momentum=cfg.model.bn_momentum, bn_epsilon=cfg.model.bn_epsilon)


def _load_init(cfg, plan, use_ema: bool = False):
    from thinjax.checkpoint import load_model
    ck_plan, variables, meta = load_model(cfg.init_from, use_ema=use_ema)
    if ck_plan != plan:
        raise ValueError(f"{cfg.init_from}: its plan ({ck_plan.describe()}) differs from the "
                         f"configured one ({plan.describe()}); set config.model to match or "
                         "config.model.plan_file")
    print(f"loaded {cfg.init_from}" + (" (EMA weights)" if use_ema else ""))
    return variables, meta


def run_evaluate(cfg, workdir: str, plan, model) -> dict:
    from thinjax.cost import count, format_cost
    from thinjax.data import eval_batches, get_source
    from thinjax.evaluate import evaluate
    size = cfg.data.eval_size or cfg.data.image_size
    cost = count(plan, size)
    print(format_cost(f"{cfg.model.name} w={plan.stem_width}", cost))
    print(plan.describe())
    if not cfg.init_from:
        raise ValueError("mode 'evaluate' needs config.init_from (a checkpoint to evaluate)")
    variables, meta = _load_init(cfg, plan)
    weights = {"eval": variables}
    if meta.get("has_ema"):  # a training checkpoint: its EMA weights too
        weights["ema_eval"] = _load_init(cfg, plan, use_ema=True)[0]
    source = get_source(cfg.data.name, data_dir=cfg.data.data_dir)
    out = {"mode": "evaluate", "workdir": workdir, **cost.to_dict(), "plan": plan.to_dict(),
           "init_from": cfg.init_from}
    for name, v in weights.items():
        batches = eval_batches(source, cfg.data.eval_split, cfg.data.eval_batch_size,
                               image_size=size, resize=cfg.data.eval_resize or None)
        res = evaluate(model, v, batches, source.num_examples(cfg.data.eval_split))
        print(f"{name}: {cfg.data.name}:{cfg.data.eval_split}: top-1 {res['top1']:.2f}%  "
              f"top-5 {res['top5']:.2f}%  loss {res['loss']:.4f}  ({res['count']} images, "
              f"{res['images_per_s']:.0f} img/s)")
        out[name] = res
    return out


def run_train(cfg, workdir: str, plan, model) -> dict:
    from thinjax.train.loop import train_and_evaluate
    init = _load_init(cfg, plan)[0] if cfg.init_from else None
    return train_and_evaluate(cfg, workdir, model, plan, init)


MODES = {"evaluate": run_evaluate, "train": run_train}


def main(argv) -> None:
    del argv
    from thinjax import fs
    from thinjax.config import validate
    from thinjax.errors import user_errors
    cfg, workdir = _CONFIG.value, _WORKDIR.value
    if cfg is None or workdir is None:
        raise app.UsageError("--config and --workdir are required")
    with user_errors():
        validate(cfg)
        plan = plan_from_config(cfg)
        fs.makedirs(workdir)
        fs.write_text(os.path.join(workdir, "config.json"), cfg.to_json_best_effort(indent=1))
        plan.save(os.path.join(workdir, "plan.json"))
        result = MODES[cfg.mode](cfg, workdir, plan, model_from_config(cfg, plan))
    import jax
    if jax.process_index() == 0:
        fs.write_text(os.path.join(workdir, "results.json"), json.dumps(result, indent=1))
        if _JSON.value:
            print(json.dumps(result))


if __name__ == "__main__":
    import sys
    from thinjax.config import check_overrides
    try:
        check_overrides(sys.argv[1:])
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    app.run(main)
