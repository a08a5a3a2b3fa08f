"""thinjax's main command.

    python -m thinjax.main --config=configs/default.py --workdir=DIR [--config.x=y ...]

Writes the resolved config to DIR/config.json and the results to DIR/results.json.
Modes: ``evaluate`` builds the configured ThinResNet, counts its cost, loads
``init_from`` (a thinjax checkpoint or an imported PyTorch/safetensors/npz file; its plan
must match the configured one) and evaluates it on ``data``.
"""

from __future__ import annotations

import json
import os
import sys

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "config file (configs/*.py)",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "output directory; rerun to resume")
_JSON = flags.DEFINE_bool("json", False, "print one JSON object as the last line")


def plan_from_config(cfg):
    from thinjax.plan import Plan, plan_from_width
    if cfg.model.get("plan_file"):
        return Plan.load(cfg.model.plan_file)
    return plan_from_width(cfg.model.name, cfg.model.width, cfg.model.num_classes,
                           cfg.model.base_width)


def model_from_config(cfg, plan):
    from thinjax.models.resnet import build_model
    return build_model(plan, dtype=cfg.model.dtype, zero_init_last_bn=cfg.model.zero_init_last_bn,
                       bn_momentum=cfg.model.bn_momentum, bn_epsilon=cfg.model.bn_epsilon)


def run_evaluate(cfg, workdir: str) -> dict:
    from thinjax.checkpoint import load_model
    from thinjax.cost import count, format_cost
    from thinjax.data import eval_batches, get_source
    from thinjax.evaluate import evaluate
    plan = plan_from_config(cfg)
    cost = count(plan, cfg.data.image_size)
    print(format_cost(f"{cfg.model.name} w={plan.stem_width}", cost))
    print(plan.describe())
    if not cfg.init_from:
        raise ValueError("mode 'evaluate' needs config.init_from (a checkpoint to evaluate)")
    ck_plan, variables, meta = load_model(cfg.init_from)
    if ck_plan != plan:
        raise ValueError(f"{cfg.init_from}: its plan ({ck_plan.describe()}) differs from the "
                         f"configured one ({plan.describe()}); set config.model to match or "
                         "config.model.plan_file")
    print(f"loaded {cfg.init_from}")
    model = model_from_config(cfg, plan)
    source = get_source(cfg.data.name, data_dir=cfg.data.data_dir)
    batches = eval_batches(source, cfg.data.eval_split, cfg.data.eval_batch_size,
                           image_size=cfg.data.image_size, resize=cfg.data.eval_resize or None)
    res = evaluate(model, variables, batches, source.num_examples(cfg.data.eval_split))
    print(f"{cfg.data.name}:{cfg.data.eval_split}: top-1 {res['top1']:.2f}%  top-5 "
          f"{res['top5']:.2f}%  loss {res['loss']:.4f}  ({res['count']} images, "
          f"{res['images_per_s']:.0f} img/s)")
    return {"mode": "evaluate", "workdir": workdir, **cost.to_dict(), "eval": res,
            "plan": plan.to_dict(), "init_from": cfg.init_from}


MODES = {"evaluate": run_evaluate}


def main(argv) -> None:
    del argv
    from thinjax.errors import user_errors
    cfg, workdir = _CONFIG.value, _WORKDIR.value
    if cfg is None or workdir is None:
        raise app.UsageError("--config and --workdir are required")
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "config.json"), "w") as f:
        f.write(cfg.to_json_best_effort(indent=1))
    with user_errors():
        if cfg.mode not in MODES:
            raise ValueError(f"config.mode {cfg.mode!r} unknown; available: {', '.join(MODES)}")
        result = MODES[cfg.mode](cfg, workdir)
    with open(os.path.join(workdir, "results.json"), "w") as f:
        json.dump(result, f, indent=1)
    if _JSON.value:
        print(json.dumps(result))


if __name__ == "__main__":
    app.run(main)
