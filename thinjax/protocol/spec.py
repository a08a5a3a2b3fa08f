"""The protocol's settings (typed, validated once) and the description of one run.

A study config's ``protocol`` section (a ConfigDict) becomes a frozen `Protocol`; every run
the study makes is a frozen `RunSpec`, whose `id` names its folder and whose `key` (a hash
of everything that determines the run) decides whether a finished row still holds.

The network is a ThinResNet by integer width (``arch``, ``base_width``, ``targets``: 16,
(8, 11)) or one of `thinjax.models.examples` by width multiplier (``example``, e.g.
"mobilenetv2", ``base_width`` 1.0, ``targets`` (0.5, 0.75)); the runs' ids read ``w8`` or
``w0.5`` alike.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import os

from thinjax.errors import ConfigError
from thinjax.trace.example import EXAMPLES

# The arms. Every arm but `dense` and `oneshot` is compared with `thin`, seed by seed.
ARMS = ("dense", "oneshot", "thin", "pruned+ft", "dense+ft", "gradual", "scratch-E",
        "scratch-B")
TRAINED = ("thin", "pruned+ft", "dense+ft", "gradual", "scratch-E", "scratch-B")
FROM_SCRATCH = ("thin", "scratch-E", "scratch-B")
# the settings a run reads (its key); the lists of targets, seeds, criteria, arms and LRs
# only decide which runs exist, so extending them keeps the finished rows
KEY_FIELDS = ("arch", "base_width", "dense_epochs", "dense_lr", "allocation", "round_to",
              "recalibrate_bn", "gradual_end", "gradual_every", "warmup_fraction",
              "train_split", "val_split", "test_split", "recipe", "recipe_overrides",
              "batch_size")
# read by a run only where set (a ThinResNet protocol's keys are those it always had)
KEY_FIELDS_IF_SET = ("example",)


@dataclasses.dataclass(frozen=True)
class Protocol:
    """What the study runs (see configs/study_cifar10_r20_protocol.py for each field)."""
    arch: str                         # a ThinResNet (thinjax.plan.ARCHS); "" with `example`
    base_width: int | float           # the dense width (an example's: its width multiplier)
    targets: tuple[int | float, ...]  # widths whose MACs are the pruning targets
    seeds: int                        # n: every arm runs seeds 0..n-1
    delta: float                      # equivalence margin (top-1 points), fixed in advance
    dense_epochs: float               # T: the dense network's in-domain training
    finetune_epochs: tuple[float, ...]  # E: the budgets after pruning
    ref_epochs: float                 # the E of LR selection and of the single-E arms
    criteria: tuple[str, ...]
    curve_criteria: int               # the best k criteria (at ref E, on val) run every E
    curve_targets: tuple[int | float, ...]    # targets where the E curve runs (thin + best k)
    control_targets: tuple[int | float, ...]  # targets of gradual, scratch-E and scratch-B
    arms: tuple[str, ...]
    lr_grid: dict                     # arm -> peak LRs tried (seed 0, first target, ref E)
    dense_lr: float                   # the recipe's LR for the dense network (not an arm)
    allocation: str = "global"
    round_to: int = 1
    recalibrate_bn: int = 200         # batches of BN recalibration after one-shot pruning
    gradual_end: float = 0.5          # fraction of E over which gradual pruning runs
    gradual_every: float = 0.05
    warmup_fraction: float = 0.05
    train_split: str = "train[:45000]"
    val_split: str = "train[45000:]"
    test_split: str = "test"
    recipe: str = "configs/quick_cifar10.py"
    recipe_name: str = ""
    recipe_overrides: tuple[str, ...] = ()
    batch_size: int = 128
    example: str = ""                 # thinjax.models.examples name ("": the ThinResNet `arch`)

    @property
    def network_name(self) -> str:
        """'resnet20 w=16' or 'mobilenetv2 width_mult=1' (the dense network)."""
        if self.example:
            return f"{self.example} width_mult={self.base_width:g}"
        return f"{self.arch} w={self.base_width}"

    @property
    def seed_list(self) -> tuple[int, ...]:
        return tuple(range(self.seeds))

    def grid(self, arm: str) -> tuple[float, ...]:
        return tuple(float(x) for x in self.lr_grid[arm])


def _tuple(v) -> tuple:
    return tuple(v) if isinstance(v, (list, tuple)) else (v,)


def from_config(section) -> Protocol:
    """A validated `Protocol` from a study config's ``protocol`` section; errors name the
    field and the fix."""
    d = dict(section)
    fields = {f.name for f in dataclasses.fields(Protocol)}
    unknown = sorted(set(d) - fields)
    if unknown:
        raise ConfigError(f"config.protocol: unknown field(s) {unknown}; valid: "
                          f"{', '.join(sorted(fields))}")
    for k in ("targets", "curve_targets", "control_targets", "finetune_epochs", "criteria",
              "arms", "recipe_overrides"):
        if k in d:
            d[k] = _tuple(d[k])
    d["lr_grid"] = {k: _tuple(v) for k, v in dict(d.get("lr_grid", {})).items()}
    try:
        p = Protocol(**d)
    except TypeError as e:
        raise ConfigError(f"config.protocol: {e}; see configs/study_cifar10_r20_protocol.py"
                          ) from None
    _check(p)
    return p


def _check(p: Protocol) -> None:
    def bad(field, why):
        raise ConfigError(f"config.protocol.{field}: {why}")
    if p.seeds < 3:
        bad("seeds", f"{p.seeds}: paired intervals need >= 3 seeds")
    if not p.delta > 0:
        bad("delta", "the equivalence margin must be > 0 (top-1 points)")
    if not p.dense_epochs > 0 or not all(e > 0 for e in p.finetune_epochs):
        bad("dense_epochs/finetune_epochs", "epochs must be > 0")
    if p.ref_epochs not in p.finetune_epochs:
        bad("ref_epochs", f"{p.ref_epochs:g} is not one of finetune_epochs "
            f"{p.finetune_epochs}")
    _check_network(p, bad)
    unknown = [a for a in p.arms if a not in ARMS]
    if unknown or "thin" not in p.arms:
        bad("arms", f"{p.arms}: use {', '.join(ARMS)} (thin, the reference, is required)")
    missing = [a for a in p.arms if a in TRAINED and not p.lr_grid.get(a)]
    if missing:
        bad("lr_grid", f"no learning rates for arm(s) {missing}: give each trained arm a "
            "grid, e.g. lr_grid={'thin': (0.1, 0.2, 0.4), ...}")
    extra = [w for w in p.curve_targets + p.control_targets if w not in p.targets]
    if extra:
        bad("curve_targets/control_targets", f"{extra} not in targets {p.targets}")
    if not 0 <= p.curve_criteria <= len(p.criteria):
        bad("curve_criteria", f"{p.curve_criteria}: between 0 and {len(p.criteria)}")


def width_text(w: int | float) -> str:
    """A width as ids and rows show it: 8, 0.5 (a ThinResNet's int exactly as it always
    was; a multiplier to 6 significant digits)."""
    return str(w) if isinstance(w, int) else f"{w:g}"


def _number(w) -> bool:
    return isinstance(w, (int, float)) and not isinstance(w, bool)


def _check_network(p: Protocol, bad) -> None:
    """A ThinResNet by whole widths, or an example network by width multipliers > 0."""
    widths = (p.base_width, *p.targets)
    if p.example:
        if p.example not in EXAMPLES or p.arch:
            bad("example", f"{p.example!r} with arch {p.arch!r}: name one of "
                f"{', '.join(sorted(EXAMPLES))} and leave arch '' (or set arch alone for a "
                "ThinResNet)")
        if not all(_number(w) and w > 0 for w in widths):
            bad("targets", f"{p.targets} (base_width {p.base_width}): width multipliers > 0")
    elif not p.arch:
        bad("arch", "name the network: arch (a ThinResNet, e.g. 'resnet20') or example "
            f"({', '.join(sorted(EXAMPLES))})")
    elif not all(isinstance(w, int) and not isinstance(w, bool) and w >= 1 for w in widths):
        bad("targets", f"{p.targets} (base_width {p.base_width}): a ThinResNet's widths are "
            "whole numbers >= 1 (width multipliers need config.protocol.example)")
    if not p.targets or any(w >= p.base_width for w in p.targets):
        bad("targets", f"{p.targets}: widths below base_width {p.base_width}")


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """One run: an arm at a target width (None: the dense width), a criterion (pruned
    arms), E epochs after the dense phase (0 for dense/oneshot), a seed and a peak LR.
    A ThinResNet's target is an int and stays one (its key hashes ``8``, never ``8.0``)."""
    arm: str
    seed: int
    target: int | float | None = None
    criterion: str | None = None
    E: float = 0.0
    lr: float | None = None

    @property
    def id(self) -> str:
        parts = [self.arm.replace("+", "-")]
        if self.criterion:
            parts.append(self.criterion)
        if self.target:
            parts.append(f"w{width_text(self.target)}")
        if self.E:
            parts.append(f"E{self.E:g}")
        if self.lr is not None:
            parts.append(f"lr{self.lr:g}")
        return "-".join(parts + [f"s{self.seed}"])

    def key(self, protocol: Protocol, data: str) -> str:
        """A hash of everything that determines this run's row: the run, the protocol
        settings it reads (the recipe file by its content) and the data's name (a changed
        config reruns it; a moved clone or data folder does not)."""
        settings = {k: getattr(protocol, k) for k in KEY_FIELDS}
        settings.update({k: getattr(protocol, k) for k in KEY_FIELDS_IF_SET
                         if getattr(protocol, k)})
        settings["recipe"] = _file_digest(protocol.recipe)
        data = os.path.basename(data.rstrip("/"))  # where the data lies does not matter
        blob = json.dumps([dataclasses.asdict(self), settings, data], sort_keys=True,
                          default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _load_recipe(path: str):
    spec = importlib.util.spec_from_file_location("_thinjax_recipe", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.get_config()


def _file_digest(path: str) -> str:
    """A digest of the config a recipe file makes (its comments and docstring aside)."""
    try:
        text = _load_recipe(path).to_json_best_effort(sort_keys=True)
    except (OSError, AttributeError, ImportError):
        return os.path.basename(path)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def recipe_config(path: str):
    """The config the recipe file `path` makes (ConfigError naming it if it makes none)."""
    try:
        return _load_recipe(path)
    except (OSError, AttributeError, ImportError) as e:
        raise ConfigError(f"config.protocol.recipe={path!r}: not a config file with "
                          f"get_config() ({e}); name one, e.g. configs/quick_mobilenetv2.py"
                          ) from None
