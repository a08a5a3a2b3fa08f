"""The full configuration schema with defaults; files in configs/ override parts of it.

Every key a config may set exists here, so that `validate` can refuse a misspelt key with
the list of valid ones (ml_collections refuses unknown `--config.x=y` overrides itself)
and values that describe no run. `check_rerun` compares a config with the one a workdir
recorded: only `SAFE_KEYS` and the run's length (`LENGTH_KEYS`) may change on a rerun.
"""

from __future__ import annotations

import difflib
import importlib.util
import json
import math
import os
import sys

import ml_collections
from ml_collections import FieldReference

from thinjax import fs
from thinjax.errors import ConfigError
from thinjax.plan import Plan
from thinjax.prune import spec as prune_spec

C = ml_collections.ConfigDict


def base_config() -> ml_collections.ConfigDict:
    c = C()
    c.mode = "train"            # train (then evaluate) | evaluate
    c.seed = 0
    c.init_from = ""            # checkpoint to start from / to evaluate (thinjax or PyTorch)

    c.model = C()
    c.model.name = "resnet20"   # thinjax.plan.ARCHS
    c.model.width = 16
    c.model.base_width = FieldReference(None, field_type=int)  # bottleneck inner rule
    c.model.num_classes = 10
    c.model.plan_file = ""      # a plan JSON overrides name/width
    c.model.dtype = "float32"   # compute dtype (bfloat16 on accelerators)
    c.model.zero_init_last_bn = False
    c.model.bn_momentum = 0.9   # Flax convention (PyTorch 0.1)
    c.model.bn_epsilon = 1e-5
    c.model.example = ""        # one of thinjax.models.examples (mobilenetv2, convnext, vit),
    #                             pruned on traced groups; "": the ThinResNet above
    c.model.width_mult = 1.0    # the example's width multiplier (its ``width``)

    c.data = C()
    c.data.name = "sample:cifar10"   # TFDS name | image folder | sample:cifar10
    c.data.data_dir = FieldReference(None, field_type=str)
    c.data.train_split = "train"
    c.data.eval_split = "test"
    c.data.image_size = 32           # training crop; evaluation size unless eval_size
    c.data.eval_size = 0             # 0: image_size
    c.data.eval_resize = 0           # >0: resize shorter side, then centre crop eval_size
    c.data.augment = "cifar"         # cifar (pad-crop-flip) | imagenet (random resized crop)
    c.data.crop_padding = 4
    c.data.rrc_scale_min = 0.08
    c.data.trivial_augment = True
    c.data.random_erasing = 0.1
    c.data.cache = "decoded"         # decoded | encoded | none (in memory, per process)
    c.data.shuffle_buffer = 50_000
    c.data.eval_batch_size = 500     # global
    c.data.num_shards = 0            # training-stream shards; 0: one per process

    c.train = C()
    c.train.batch_size = 128         # global
    c.train.epochs = 600.0
    c.train.grad_accum = 1           # micro-batches per step (same global batch)
    c.train.label_smoothing = 0.1
    c.train.mixup_alpha = 0.2
    c.train.cutmix_alpha = 1.0
    c.train.loss = "softmax"         # softmax (cross-entropy) | bce (RSB)
    c.train.log_every = 50           # steps
    c.train.eval_every_epochs = 10.0
    c.train.checkpoint_every = 1000  # steps
    c.train.keep_checkpoints = 3
    c.train.keep_best = True         # also keep the best by EMA (else raw) eval top-1
    c.train.async_checkpoints = True
    c.train.total_steps = 0          # >0 overrides epochs (tests, benchmarks)
    c.train.mesh_model = 1           # size of the 'model' mesh axis (parameters replicated)

    c.optim = C()
    c.optim.name = "sgd"             # sgd | lamb | adamw
    c.optim.lr = 0.5                 # peak, at lr_batch; scaled linearly with batch_size
    c.optim.lr_batch = 1024
    c.optim.schedule = "cosine"      # cosine | constant | step
    c.optim.step_epochs = ()         # for schedule=step: x0.1 at these epochs
    c.optim.warmup_epochs = 5.0
    c.optim.warmup_init = 0.01       # warmup starts at this fraction of the peak
    c.optim.momentum = 0.9
    c.optim.nesterov = False
    c.optim.b1 = 0.9
    c.optim.b2 = 0.999
    c.optim.eps = 1e-6
    c.optim.weight_decay = 2e-5
    c.optim.weight_decay_on = r"kernel$"   # regex on param paths: conv and dense kernels
    c.optim.clip_grad_norm = 0.0

    c.ema = C()
    c.ema.enabled = True
    c.ema.decay = 0.99998
    c.ema.every = 32                 # steps between EMA updates
    c.ema.adjust = True              # torchvision: alpha = (1-decay) * batch * every / epochs
    c.ema.warmup_copy = True         # during LR warmup the EMA copies the weights

    c.prune = C()                    # structured pruning (thinjax.prune), off by default
    c.prune.schedule = "none"        # none | oneshot | iterative | gradual | soft
    c.prune.criterion = "l1"         # l1 | l2 | bn_scale | taylor | fpgm | hrank | group_norm
    #                                  | random | registered
    c.prune.score_members = "producers"  # producers | all (+ BN scales, consumer slices)
    c.prune.fpgm_p = 0               # fpgm: 0 raw filters (paper); p>=1 |w|^p (Torch-Pruning)
    c.prune.reduce = "mean"          # a group's score over its members: mean | sum | max
    c.prune.allocation = "global"    # global | uniform | explicit
    c.prune.normalization = "mean"   # per-group score normalisation for global ranking
    c.prune.group_ratios = ()        # explicit: ((regex on group name, fraction), ...)
    c.prune.target_kind = "macs_fraction"  # ratio | params | macs | params_fraction | macs_fraction
    c.prune.target = 0.5
    c.prune.round_to = 1             # keep a multiple of this many channels per group
    c.prune.allow_block_removal = False  # inner groups may fall to 0 (block -> identity)
    c.prune.start_epoch = 0.0        # first event (0: before the first step)
    c.prune.end_epoch = 0.0          # gradual: last event
    c.prune.every_epochs = 1.0       # iterative / gradual: epochs between events
    c.prune.num_events = 1           # iterative: number of events
    c.prune.taylor_batches = 8       # batches that taylor and hrank accumulate
    c.prune.bn_l1 = 0.0              # L1 penalty on BN scales (network slimming), any run
    c.prune.regularizer = "none"     # none | group_lasso | greg (thinjax.prune.regularize)
    c.prune.reg_strength = 5e-4      # group_lasso: lambda
    c.prune.greg_step = 1e-4         # greg: the coefficient grows by this ...
    c.prune.greg_every = 10          # ... every this many steps ...
    c.prune.greg_ceiling = 1.0       # ... up to this
    c.prune.materialize = True       # after the last event, continue on the smaller network

    c.logging = C()                  # where the scalars go besides metrics.jsonl and tensorboard/
    c.logging.wandb = False          # also Weights & Biases (pip install 'thinjax[wandb]')
    c.logging.wandb_project = "thinjax"
    c.logging.wandb_entity = ""      # "": wandb's default entity
    c.logging.wandb_name = ""        # "": the workdir's folder name
    c.logging.wandb_mode = ""        # online | offline | disabled; "": wandb's ($WANDB_MODE)
    return c


def _keys(cfg, prefix=""):
    out = set()
    for k, v in cfg.items():
        out.add(prefix + k)
        if isinstance(v, ml_collections.ConfigDict):
            out |= _keys(v, prefix + k + ".")
    return out


def _refuse(keys: list[str], valid: set[str]) -> None:
    first = sorted(keys)[0]
    section = first.rsplit(".", 1)[0] + "." if "." in first else ""
    depth = first.count(".")
    near = sorted(k for k in valid if k.startswith(section) and k.count(".") == depth)
    near = near or sorted(k for k in valid if "." not in k)
    guess = difflib.get_close_matches(first, sorted(valid), n=1, cutoff=0.6)
    hint = f"did you mean {guess[0]!r}? " if guess else ""
    raise ConfigError(f"unknown config key {first!r}; {hint}valid keys here: {', '.join(near)}")


def check_overrides(argv: list[str]) -> None:
    """Refuses `--config.a.b=v` flags whose key the schema does not know (before absl's
    own, terser, error), listing the valid keys."""
    valid = _keys(base_config())
    bad = [a.split("=", 1)[0][len("--config."):] for a in argv if a.startswith("--config.")]
    bad = [k for k in bad if k not in valid]
    if bad:
        _refuse(bad, valid)


def validate(cfg: ml_collections.ConfigDict) -> None:
    """Raises ValueError naming keys that the schema does not know, with the valid ones."""
    valid = _keys(base_config())
    unknown = sorted(_keys(cfg) - valid)
    if unknown:
        _refuse(unknown, valid)
    if cfg.mode not in ("train", "evaluate"):
        raise ConfigError(f"config.mode {cfg.mode!r} unknown; use 'train' or 'evaluate'")
    _check_ranges(cfg)
    _check_logging(cfg)
    prune_spec.from_config(cfg.prune)  # the pruning section, typed: errors name the field


WANDB_MODES = ("", "online", "offline", "disabled")


def _check_logging(cfg: ml_collections.ConfigDict) -> None:
    """Refuses a W&B mode wandb does not know, and W&B logging without wandb installed
    (found, not imported: importing wandb is slow)."""
    log = cfg.get("logging")
    if log is None or not log.wandb:
        return
    if log.wandb_mode not in WANDB_MODES:
        raise ConfigError(f"config.logging.wandb_mode={log.wandb_mode!r} unknown; use one of "
                          "online, offline, disabled (or '' for wandb's default)")
    if importlib.util.find_spec("wandb") is None:
        raise ConfigError(WANDB_MISSING)


WANDB_MISSING = ("config.logging.wandb=True needs the Python package 'wandb', which is not "
                 "installed: pip install 'thinjax[wandb]' (or set --config.logging.wandb=False)")


POSITIVE = ("model.width", "data.image_size", "data.eval_batch_size", "train.batch_size",
            "train.grad_accum", "train.log_every", "train.eval_every_epochs",
            "train.checkpoint_every", "train.keep_checkpoints", "train.mesh_model",
            "ema.every")
NON_NEGATIVE = ("train.total_steps", "data.eval_size", "data.eval_resize", "data.num_shards")


def _check_ranges(cfg: ml_collections.ConfigDict) -> None:
    """Refuses sizes, counts and lengths that describe no run (before anything is written)."""
    get = lambda key: cfg[key.split(".")[0]][key.split(".")[1]]  # noqa: E731
    for key in POSITIVE:
        if get(key) is None or get(key) <= 0:
            raise ConfigError(f"config.{key}={get(key)}: must be a positive number; set "
                              f"--config.{key}")
    for key in NON_NEGATIVE:
        if get(key) is None or get(key) < 0:
            raise ConfigError(f"config.{key}={get(key)}: must be >= 0; set --config.{key}")
    if not 0.0 <= cfg.ema.decay < 1.0:
        raise ConfigError(f"config.ema.decay={cfg.ema.decay:g}: must be in [0, 1) (e.g. 0.9999); "
                          "set --config.ema.decay")
    if not math.isfinite(float(cfg.train.epochs)):
        raise ConfigError(f"config.train.epochs={cfg.train.epochs}: must be a finite number; "
                          "set --config.train.epochs")
    if cfg.mode == "train" and not cfg.train.total_steps and not cfg.train.epochs > 0:
        raise ConfigError(f"config.train.epochs={cfg.train.epochs:g} trains for no step; set "
                          "--config.train.epochs (or train.total_steps) to a positive number")


# -- rerunning a workdir ---------------------------------------------------------------

SAFE_KEYS = (  # may differ on a rerun of a workdir: they change no weight
    "train.log_every", "train.eval_every_epochs", "train.checkpoint_every",
    "train.keep_checkpoints", "train.keep_best", "train.async_checkpoints",
    "data.eval_batch_size", "data.data_dir", "data.cache", "logging.wandb",
    "logging.wandb_project", "logging.wandb_entity", "logging.wandb_name", "logging.wandb_mode")
LENGTH_KEYS = ("train.epochs", "train.total_steps")  # allowed, with a warning


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def _recorded(path: str):
    try:
        return json.loads(fs.read_text(path))
    except (OSError, ValueError) as e:
        raise ConfigError(f"{path} cannot be read ({e}): it records the run in this workdir; "
                          "use a new --workdir, or restore the file") from e


def config_changes(workdir: str, cfg, plan: Plan) -> list[str]:
    """'key: recorded -> new' for each config key (and the plan) that differs from what
    `workdir` recorded on its first start; [] for a new workdir."""
    path = os.path.join(workdir, "config.json")
    if not fs.exists(path):
        return []
    old, new = _flat(_recorded(path)), _flat(json.loads(cfg.to_json_best_effort()))
    default = _flat(json.loads(base_config().to_json_best_effort()))
    changes = [f"{k}: {old.get(k, default.get(k))!r} -> {new.get(k)!r}"
               for k in sorted(set(old) | set(new)) if old.get(k, default.get(k)) != new.get(k)]
    plan_path = os.path.join(workdir, "plan.json")
    if fs.exists(plan_path) and _recorded(plan_path) != json.loads(plan.to_json()):
        old = _recorded(plan_path)
        was = str(old["example"]) if "example" in old else Plan.from_dict(old).describe()
        changes.append(f"plan: {was} -> {plan.describe()}")
    return changes


def check_rerun(workdir: str, cfg, plan: Plan) -> None:
    """Refuses to resume `workdir` with a config or plan that changes the run (see the
    module docstring); warns about a changed length."""
    changes = config_changes(workdir, cfg, plan)
    old_mode = _recorded(os.path.join(workdir, "config.json")).get("mode") if changes else None
    if old_mode == cfg.mode == "evaluate":
        return  # an evaluation keeps nothing but its results
    key = lambda c: c.split(":")[0]  # noqa: E731
    refused = [c for c in changes if key(c) not in SAFE_KEYS + LENGTH_KEYS]
    if refused:
        more = f" (and {len(refused) - 6} more)" if len(refused) > 6 else ""
        raise ConfigError(
            f"{workdir} holds a run made with another config: {'; '.join(refused[:6])}{more}. "
            "Resuming it would mix two runs, so nothing was touched. Use a new --workdir for "
            f"the new config, or rerun with the values recorded in "
            f"{os.path.join(workdir, 'config.json')}. Keys that may change on a rerun: "
            f"{', '.join(SAFE_KEYS + LENGTH_KEYS)}")
    for c in changes:
        if key(c) in LENGTH_KEYS:
            print(f"warning: {c}: the run's length changed; the learning-rate schedule "
                  "follows the new length from the resumed step", file=sys.stderr)


def study_cifar_recipe(model: str, width: int, dataset: str,
                       num_classes: int) -> ml_collections.ConfigDict:
    """The study's CIFAR recipe: base_config's optimiser and regularisers (SGD 0.9, lr 0.5
    at 1024, 5-epoch warmup + cosine, wd 2e-5 on kernels, LS 0.1, mixup 0.2 / cutmix 1.0,
    pad-crop-flip + TrivialAugmentWide + erasing 0.1, EMA), batch 128, 600 epochs."""
    c = base_config()
    c.model.name, c.model.width, c.model.num_classes = model, width, num_classes
    c.data.name = dataset
    c.train.batch_size = 128
    c.train.epochs = 600
    c.train.eval_every_epochs = 10
    c.train.log_every = 100
    c.train.checkpoint_every = 2000
    return c


# "ResNet strikes back" (Wightman, Touvron, Jegou 2021), Table 1: epochs, lr at batch 2048,
# weight decay, mixup alpha, training resolution.
RSB = {"a1": (600, 5e-3, 0.01, 0.2, 224), "a2": (300, 5e-3, 0.02, 0.1, 224),
       "a3": (100, 8e-3, 0.02, 0.1, 160)}


def rsb_procedure(name: str) -> ml_collections.ConfigDict:
    """ResNet-50 with RSB procedure A1/A2/A3: LAMB, BCE, cosine with 5 warmup epochs,
    cutmix 1.0, random-resized crop, test at 224 (resize 236), no EMA, zero-init last BN.
    TrivialAugmentWide stands in for RandAugment; no repeated augmentation or stochastic
    depth."""
    epochs, lr, wd, mixup, size = RSB[name]
    c = base_config()
    c.model.name, c.model.width, c.model.num_classes = "resnet50", 64, 1000
    c.model.dtype = "bfloat16"
    c.model.zero_init_last_bn = True
    c.data.name = "imagenet2012"
    c.data.train_split, c.data.eval_split = "train", "validation"
    c.data.augment, c.data.image_size = "imagenet", size
    c.data.eval_size, c.data.eval_resize = 224, 236
    c.data.cache, c.data.shuffle_buffer = "none", 16_384
    c.data.random_erasing = 0.0
    c.train.batch_size, c.train.epochs = 2048, epochs
    c.train.loss, c.train.label_smoothing = "bce", 0.0
    c.train.mixup_alpha, c.train.cutmix_alpha = mixup, 1.0
    c.train.eval_every_epochs, c.train.checkpoint_every = 10, 2000
    c.optim.name, c.optim.lr, c.optim.lr_batch = "lamb", lr, 2048
    c.optim.warmup_epochs, c.optim.warmup_init = 5, 1e-4
    c.optim.weight_decay = wd
    c.ema.enabled = False
    return c


def short_cpu_recipe(dataset: str, epochs: float) -> ml_collections.ConfigDict:
    """ThinResNet-20 w=8 with the study's optimiser and little regularisation, as a budget
    of a few epochs wants: SGD (Nesterov) lr 0.2 at batch 128, 1 warmup epoch then cosine,
    weight decay 5e-4, label smoothing 0.1, pad-crop-flip only, EMA 0.999 per step."""
    c = base_config()
    c.model.name, c.model.width = "resnet20", 8
    c.data.name = dataset
    c.data.trivial_augment = False
    c.data.random_erasing = 0.0
    c.train.batch_size = 128
    c.train.epochs = epochs
    c.train.mixup_alpha = c.train.cutmix_alpha = 0.0
    c.optim.lr, c.optim.lr_batch = 0.2, 128
    c.optim.nesterov = True
    c.optim.warmup_epochs = 1
    c.optim.weight_decay = 5e-4
    c.ema.decay, c.ema.every, c.ema.adjust = 0.999, 1, False
    return c
