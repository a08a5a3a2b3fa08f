"""Typed, frozen settings of a run: what train/ and data/ read, never a ConfigDict.

A command resolves its ConfigDict once (`from_config`, after `thinjax.config.validate`) and
hands the result down. Each section is a frozen dataclass whose fields are the config's
keys (`thinjax.config.base_config` is the schema, with the defaults and comments); the
pruning section is a `thinjax.prune.spec.PruneSpec`. `to_dict` gives back the plain
nested dict that ``config.json`` and checkpoints record.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from thinjax.prune.spec import PruneSpec
from thinjax.prune.spec import from_config as prune_from_config

__all__ = ["DataSettings", "EmaSettings", "LoggingSettings", "ModelSettings", "OptimSettings",
           "Settings", "TrainSettings", "as_settings", "data_settings", "from_config"]

_frozen = dataclasses.dataclass(frozen=True)


@_frozen
class ModelSettings:
    name: str
    width: int
    base_width: int | None
    num_classes: int
    plan_file: str
    dtype: str
    zero_init_last_bn: bool
    bn_momentum: float
    bn_epsilon: float
    example: str = ""           # one of thinjax.models.examples ("": a ThinResNet)
    width_mult: float = 1.0     # the example's width multiplier


@_frozen
class DataSettings:
    name: str
    data_dir: str | None
    train_split: str
    eval_split: str
    image_size: int
    eval_size: int
    eval_resize: int
    augment: str
    crop_padding: int
    rrc_scale_min: float
    trivial_augment: bool
    random_erasing: float
    cache: str
    shuffle_buffer: int
    eval_batch_size: int
    num_shards: int


@_frozen
class TrainSettings:
    batch_size: int
    epochs: float
    grad_accum: int
    label_smoothing: float
    mixup_alpha: float
    cutmix_alpha: float
    loss: str
    log_every: int
    eval_every_epochs: float
    checkpoint_every: int
    keep_checkpoints: int
    keep_best: bool
    async_checkpoints: bool
    total_steps: int
    mesh_model: int


@_frozen
class OptimSettings:
    name: str
    lr: float
    lr_batch: int
    schedule: str
    step_epochs: tuple[float, ...]
    warmup_epochs: float
    warmup_init: float
    momentum: float
    nesterov: bool
    b1: float
    b2: float
    eps: float
    weight_decay: float
    weight_decay_on: str
    clip_grad_norm: float


@_frozen
class EmaSettings:
    enabled: bool
    decay: float
    every: int
    adjust: bool
    warmup_copy: bool


@_frozen
class LoggingSettings:
    wandb: bool
    wandb_project: str
    wandb_entity: str
    wandb_name: str
    wandb_mode: str


@_frozen
class Settings:
    """A whole run's settings (the config's sections, typed)."""
    mode: str
    seed: int
    init_from: str
    model: ModelSettings
    data: DataSettings
    train: TrainSettings
    optim: OptimSettings
    ema: EmaSettings
    prune: PruneSpec
    logging: LoggingSettings

    def to_dict(self) -> dict[str, Any]:
        """The plain nested dict of the config it came from (JSON-ready)."""
        d = dataclasses.asdict(self)
        d["optim"]["step_epochs"] = list(d["optim"]["step_epochs"])
        d["prune"]["group_ratios"] = [list(x) for x in d["prune"]["group_ratios"]]
        return d


_SECTIONS = {"model": ModelSettings, "data": DataSettings, "train": TrainSettings,
             "optim": OptimSettings, "ema": EmaSettings, "logging": LoggingSettings}


def _section(kind, section) -> Any:
    values = {}
    for f in dataclasses.fields(kind):
        if f.name not in section and f.default is not dataclasses.MISSING:
            values[f.name] = f.default    # a key added since the config was recorded
            continue
        v = section[f.name]
        values[f.name] = tuple(v) if isinstance(v, list) else v
    return kind(**values)


def data_settings(section) -> DataSettings:
    """The typed data section of a config's ``data`` (a ConfigDict or dict)."""
    return _section(DataSettings, section)


def from_config(cfg) -> Settings:
    """The typed settings of a (validated) ConfigDict or plain dict with the schema's
    sections; tuples for lists, the prune section validated (`PruneSpec`)."""
    sections = {k: _section(kind, cfg[k]) for k, kind in _SECTIONS.items()}
    return Settings(mode=str(cfg["mode"]), seed=int(cfg["seed"]),
                    init_from=str(cfg["init_from"] or ""), prune=prune_from_config(cfg["prune"]),
                    **sections)


def as_settings(cfg) -> Settings:
    """`cfg` if it already is `Settings`, else `from_config(cfg)`: the one conversion at
    the entry of train/."""
    return cfg if isinstance(cfg, Settings) else from_config(cfg)
