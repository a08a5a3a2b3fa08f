"""`PruneSpec`: what to prune and how, typed and validated, built once.

The one front door for a pruning decision's settings. A config's ``prune`` section
(`from_config`), the prune command's flags (`thinjax.convert`) and a study entry all build a
`PruneSpec`; the training controller, the offline prune (`thinjax.conversion.convert`) and
the studies take it. Its fields are named like the ``prune`` config keys (see
`thinjax.config.base_config`), so ``to_flags()`` spells it back as ``--config.prune.*``
overrides for a training subprocess. Errors name the field.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

from thinjax.errors import ConfigError
from thinjax.prune.allocate import KINDS, Target
from thinjax.prune.criteria import CRITERIA, MEMBERS, REDUCE
from thinjax.prune.regularize import REGULARIZERS
from thinjax.prune.schedule import SCHEDULES

__all__ = ["ALLOCATIONS", "NORMALIZATIONS", "PruneSpec", "from_config"]

ALLOCATIONS = ("global", "uniform", "explicit")
# the fields the prune command takes as flags (a one-shot decision; `to_command_flags`)
COMMAND_FIELDS = ("criterion", "score_members", "fpgm_p", "reduce", "allocation",
                  "normalization", "group_ratios", "target_kind", "target", "round_to",
                  "allow_block_removal", "taylor_batches")
NORMALIZATIONS = ("mean", "max", "sum", "none")


@dataclasses.dataclass(frozen=True)
class PruneSpec:
    """A pruning decision and its schedule (fields: the ``prune`` config keys)."""
    schedule: str = "none"          # none | oneshot | iterative | gradual | soft
    criterion: str = "l1"           # a name in thinjax.prune.criteria.CRITERIA
    score_members: str = "producers"
    fpgm_p: int = 0
    reduce: str = "mean"
    allocation: str = "global"
    normalization: str = "mean"
    group_ratios: tuple[tuple[str, float], ...] = ()
    target_kind: str = "macs_fraction"
    target: float = 0.5
    round_to: int = 1
    allow_block_removal: bool = False
    start_epoch: float = 0.0
    end_epoch: float = 0.0
    every_epochs: float = 1.0
    num_events: int = 1
    taylor_batches: int = 8
    bn_l1: float = 0.0
    regularizer: str = "none"
    reg_strength: float = 5e-4
    greg_step: float = 1e-4
    greg_every: int = 10
    greg_ceiling: float = 1.0
    materialize: bool = True

    def __post_init__(self):
        _check(self)

    def goal(self) -> Target:
        """The target as the allocator takes it."""
        return Target(self.target_kind, float(self.target))

    def to_flags(self, prefix: str = "--config.prune.") -> list[str]:
        """The fields that differ from the defaults, as command-line overrides."""
        out = []
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if v != f.default:
                out.append(f"{prefix}{f.name}={_spell(v)}")
        return out

    def to_command_flags(self) -> list[str]:
        """The one-shot decision (criterion, scoring, allocation, target, round_to) as the
        prune command's flags (``python -m thinjax.convert``), defaults left out; the
        schedule and regulariser fields belong to training and are not spelled."""
        out = []
        for name in COMMAND_FIELDS:
            v, default = getattr(self, name), _DEFAULTS[name]
            if name == "group_ratios":
                out += [f"--group_ratio={p}={r:g}" for p, r in v]
            elif isinstance(v, bool):
                out += [f"--{'' if v else 'no'}{name}"] if v != default else []
            elif name in ("target_kind", "target") or v != default:
                out.append(f"--{name}={_spell(v)}")
        return out

    def replace(self, **changes) -> PruneSpec:
        return dataclasses.replace(self, **changes)


_DEFAULTS = {f.name: f.default for f in dataclasses.fields(PruneSpec)}


def from_config(section: Mapping[str, Any] | None, where: str = "config.prune.") -> PruneSpec:
    """A `PruneSpec` from a config's ``prune`` section (a ConfigDict or dict; missing keys
    take the defaults). Unknown keys and bad values raise ConfigError naming the field as
    `where` + key (``config.prune.criterion``; the prune command passes ``--``)."""
    d = dict(section or {})
    names = {f.name: f for f in dataclasses.fields(PruneSpec)}
    unknown = sorted(set(d) - set(names))
    if unknown:
        raise ConfigError(f"{where.rstrip('.')}: unknown key(s) {', '.join(unknown)}; valid: "
                          f"{', '.join(sorted(names))}")
    typed = {}
    for k, v in d.items():
        try:
            typed[k] = _coerce(names[k], v)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"{where}{k}={v!r}: {e}") from None
    try:
        return PruneSpec(**typed)
    except ConfigError as e:
        raise ConfigError(f"{where}{e}") from None


def _coerce(f: dataclasses.Field, v):
    kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", "")
    if kind == "bool":
        if not isinstance(v, bool):
            raise TypeError("must be True or False")
        return v
    if kind == "int":
        if isinstance(v, bool) or float(v) != int(float(v)):
            raise ValueError("must be a whole number")
        return int(float(v))
    if kind == "float":
        if isinstance(v, bool):
            raise TypeError("must be a number")
        return float(v)
    if f.name == "group_ratios":
        return tuple((str(p), float(r)) for p, r in v)
    return str(v)


_CHOICES = {"schedule": SCHEDULES, "score_members": MEMBERS, "reduce": tuple(REDUCE),
            "allocation": ALLOCATIONS, "normalization": NORMALIZATIONS,
            "target_kind": KINDS, "regularizer": REGULARIZERS}
_AT_LEAST = {"round_to": 1, "num_events": 1, "taylor_batches": 1, "greg_every": 1,
             "fpgm_p": 0, "start_epoch": 0.0, "end_epoch": 0.0, "bn_l1": 0.0,
             "reg_strength": 0.0, "greg_step": 0.0, "greg_ceiling": 0.0}


def _check(s: PruneSpec) -> None:
    """Refuses values that describe no pruning; the message starts with the field."""
    for name, choices in _CHOICES.items():
        if getattr(s, name) not in choices:
            raise ConfigError(f"{name}={getattr(s, name)!r}: unknown; use one of "
                              f"{', '.join(choices)}")
    if s.criterion not in CRITERIA:
        raise ConfigError(f"criterion={s.criterion!r}: unknown pruning criterion; use one of "
                          f"{', '.join(sorted(CRITERIA))} (or register yours first)")
    for name, low in _AT_LEAST.items():
        v = getattr(s, name)
        if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= low):
            raise ConfigError(f"{name}={v!r}: must be a finite number >= {low}")
    if not (math.isfinite(s.every_epochs) and s.every_epochs > 0):
        raise ConfigError(f"every_epochs={s.every_epochs!r}: must be > 0")
    try:
        s.goal()
    except ValueError as e:
        raise ConfigError(f"target={s.target!r}: {e}") from None


def _spell(v) -> str:
    if isinstance(v, float):
        return f"{v:.10g}"
    if isinstance(v, tuple):
        return repr(tuple(tuple(x) for x in v))
    return str(v)
