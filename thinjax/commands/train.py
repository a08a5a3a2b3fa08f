"""thinjax's main command: train or evaluate one configured network.

    python -m thinjax.main --config=configs/thin_cifar.py:resnet20,16,cifar10 --workdir=DIR \\
        [--config.x=y ...] [--json]
    thinjax-train ...                         (the same, as a console script)

Modes (config.mode):
  * ``train``: train the configured ThinResNet (from scratch, or from ``init_from``), then
    evaluate raw and EMA weights. Rerunning with the same workdir resumes. With
    ``config.model.example`` (mobilenetv2, convnext, vit; ``config.model.width_mult``) an
    example network of thinjax.models.examples instead, pruned on traced channel groups.
  * ``evaluate``: evaluate ``init_from`` (a thinjax checkpoint or workdir, or an imported
    PyTorch/safetensors/npz file; its plan must match the configured one) on ``data``.
DIR receives config.json, plan.json and results.json (see thinjax.train.loop for the rest).

Rerunning a workdir (docs/training.md, "Resuming"): the config and plan recorded in
DIR/config.json and DIR/plan.json are compared with the new ones before anything is
written. A difference in anything that changes what the run computes (model, plan, data,
augmentation, recipe, optimiser, batch, seed, EMA, pruning, init_from, mode) is refused,
naming the keys; only `thinjax.config.SAFE_KEYS` (logging, evaluation and checkpoint frequency and
retention, async checkpoints, eval batch size, where the data lives, its in-memory cache)
and the run's length (`LENGTH_KEYS`, with a warning: the LR schedule follows the new
length) may change. A start that fails before the run has logged or saved anything
removes what it created in DIR (never what was there before). A directory that cannot be
written is one ``error:`` line naming it.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys

import jax
from absl import flags
from ml_collections import config_flags

from thinjax import fs, settings
from thinjax.commands import cli
from thinjax.config import check_overrides, check_rerun, validate
from thinjax.cost import format_cost
from thinjax.errors import CheckpointError, ConfigError, user_errors
from thinjax.evaluation import evaluate_on
from thinjax.load import load_network
from thinjax.models.resnet import build_model
from thinjax.plan import Plan, plan_from_width
from thinjax.sharding import initialize_distributed
from thinjax.trace.example import ExampleNet, example_net, network_from_meta
from thinjax.trace.networks import network
from thinjax.workdir import check_workdir, locked, mark_workdir

_FLAGS: dict = {}  # name -> flag holder, once define_flags has run


def define_flags() -> None:
    """Defines --config, --workdir and --json as global absl flags (ml_collections' config
    flag must be global). Called by `cli_main`: importing this module as a library (for
    `plan_from_config`, ...) defines none, so it can share a process with thinjax.study,
    which defines its own --config."""
    if _FLAGS:
        return
    _FLAGS["config"] = config_flags.DEFINE_config_file(
        "config", None, "config file (configs/*.py, optionally :ARGS)", lock_config=True)
    _FLAGS["workdir"] = flags.DEFINE_string("workdir", None, "output directory; rerun to "
                                            "resume")
    _FLAGS["json"] = cli.define_json()
    flags.mark_flags_as_required(["config", "workdir"])


def plan_from_config(cfg) -> Plan | ExampleNet:
    """The configured network: a plan (``model.plan_file`` or name and width), or with
    ``model.example`` an example network's description (a ``plan_file`` the prune command
    wrote for an example holds that description)."""
    if cfg.model.plan_file:
        return _network_file(cfg.model.plan_file)
    if cfg.model.get("example"):
        return example_net(cfg.model.example, cfg.data.image_size,
                           width=cfg.model.width_mult, num_classes=cfg.model.num_classes)
    return plan_from_width(cfg.model.name, cfg.model.width, cfg.model.num_classes,
                           cfg.model.base_width)


def _network_file(path: str) -> Plan | ExampleNet:
    """A plan file, or the file form of an example network's description."""
    try:
        d = json.loads(fs.read_text(path))
    except (OSError, ValueError):
        d = None          # Plan.load says what is wrong with it
    if isinstance(d, dict) and "example" in d:
        return network_from_meta(d, where=path)
    return Plan.load(path)


def model_from_config(cfg, plan):
    if isinstance(plan, ExampleNet):  # its own options (examples have no dtype, BN fields)
        return plan.module()
    return build_model(plan, dtype=cfg.model.dtype, zero_init_last_bn=cfg.model.zero_init_last_bn,
                       bn_momentum=cfg.model.bn_momentum, bn_epsilon=cfg.model.bn_epsilon)


def _load_init(cfg, plan, use_ema: bool = False):
    ck_plan, variables, meta = load_network(cfg.init_from, use_ema=use_ema)
    if ck_plan != plan:
        raise CheckpointError(f"{cfg.init_from}: its network ({ck_plan.describe()}) differs "
                              f"from the configured one ({plan.describe()}); set config.model "
                              "to match or config.model.plan_file")
    print(f"loaded {cfg.init_from}" + (" (EMA weights)" if use_ema else ""))
    return variables, meta


def run_evaluate(cfg, workdir: str, plan, model) -> dict:
    size = cfg.data.eval_size or cfg.data.image_size
    cost = network(plan, model, size).cost(size)
    name = cfg.model.example if isinstance(plan, ExampleNet) else \
        f"{cfg.model.name} w={plan.stem_width}"
    print(format_cost(name, cost))
    print(plan.describe())
    if not cfg.init_from:
        raise ConfigError("mode 'evaluate' needs config.init_from (a checkpoint to evaluate)")
    variables, meta = _load_init(cfg, plan)
    weights = {"eval": variables}
    if meta.get("has_ema"):  # a training checkpoint: its EMA weights too
        weights["ema_eval"] = _load_init(cfg, plan, use_ema=True)[0]
    from thinjax.data import get_source  # TensorFlow (the train extra): loaded when used
    source = get_source(cfg.data.name, data_dir=cfg.data.data_dir)
    out = {"mode": "evaluate", "workdir": workdir, **cost.to_dict(),
           "plan": plan.to_dict(), "init_from": cfg.init_from}
    for name, v in weights.items():
        res = evaluate_on(plan, v, source, cfg.data.eval_split, cfg.data.eval_batch_size,
                          data=cfg.data.name, image_size=size,
                          resize=cfg.data.eval_resize or None, model=model)
        print(f"{name}: {cfg.data.name}:{cfg.data.eval_split}: top-1 {res['top1']:.2f}%  "
              f"top-5 {res['top5']:.2f}%  loss {res['loss']:.4f}  ({res['count']} images, "
              f"{res['images_per_s']:.0f} img/s)")
        out[name] = res
    return out


def run_train(cfg, workdir: str, plan, model) -> dict:
    init = _load_init(cfg, plan)[0] if cfg.init_from else None
    from thinjax.train.loop import train_and_evaluate  # TensorFlow (the train extra)
    return train_and_evaluate(settings.from_config(cfg), workdir, model, plan, init)


MODES = {"evaluate": run_evaluate, "train": run_train}


def _has_progress(workdir: str) -> bool:
    """Whether the run has saved a checkpoint or logged a metric line."""
    ck = os.path.join(workdir, "checkpoints")
    metrics = os.path.join(workdir, "metrics.jsonl")
    return (os.path.isdir(ck) and any(n.isdigit() for n in os.listdir(ck))) or \
        (os.path.isfile(metrics) and os.path.getsize(metrics) > 0)


def _first_process() -> bool:
    return not jax.distributed.is_initialized() or jax.process_index() == 0


def _config():
    """The --config value; a file that failed to load is one ConfigError."""
    cfg = _FLAGS["config"].value
    try:
        cfg.keys()  # ml_collections reports a config file it could not load here
    except OSError as e:
        reason = [ln.strip() for ln in str(e).splitlines() if ln.strip()][-1]
        raise ConfigError(f"--config={config_flags.get_config_filename(flags.FLAGS['config'])}"
                          f": cannot load the config file ({reason}); give a config file "
                          "such as configs/thin_cifar.py:resnet20,16,cifar10") from None
    return cfg


def main(argv: list[str]) -> dict:
    """Validates the config, compares it with the workdir's record, writes config.json and
    plan.json, runs the mode; the first process writes results.json. Returns the result
    (thinjax.cli prints it with --json)."""
    if len(argv) > 1:
        raise cli.UsageError(f"unexpected argument {argv[1]!r} (config values go in "
                             "--config.KEY=VALUE)")
    cfg, workdir = _config(), _FLAGS["workdir"].value
    validate(cfg)
    check_workdir(workdir)
    plan = plan_from_config(cfg)
    initialize_distributed()  # before the lock: process 0 of a multi-process job takes it
    keep = lambda: _has_progress(workdir) or not _first_process()  # noqa: E731
    with fs.writing(workdir, "choose a --workdir you can write to"), \
            fs.undo_created(workdir, keep=keep):
        fs.makedirs(workdir)
        with locked(workdir) if _first_process() else contextlib.nullcontext():
            try:
                return _run(cfg, workdir, plan)
            except BaseException:
                fs.remove_unfinished_checkpoints(os.path.join(workdir, "checkpoints"))
                raise


def _run(cfg, workdir: str, plan) -> dict:
    """The run itself, under the workdir's lock: the rerun check, the records, the mode."""
    check_rerun(workdir, cfg, plan)
    if _first_process():
        mark_workdir(workdir)
    fs.write_text(os.path.join(workdir, "config.json"), cfg.to_json_best_effort(indent=1))
    plan.save(os.path.join(workdir, "plan.json"))
    result = MODES[cfg.mode](cfg, workdir, plan, model_from_config(cfg, plan))
    if jax.process_index() == 0:
        fs.write_text(os.path.join(workdir, "results.json"), json.dumps(result, indent=1))
    return result


def cli_main() -> None:
    """The ``thinjax-train`` console script and ``python -m thinjax.main``: a misspelt
    ``--config.KEY`` is refused (with the valid keys) before anything runs."""
    with user_errors():
        check_overrides(sys.argv[1:])
    define_flags()
    cli.run(main)


if __name__ == "__main__":
    cli_main()
