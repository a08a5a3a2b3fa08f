"""Which runs a study config asks for (`plan_runs`, `budget_plan`), as `StudyRun` records."""

from __future__ import annotations

import dataclasses
import re

from thinjax.errors import ConfigError
from thinjax.prune import spec as prune_spec


# -- typed run records: what each kind of run needs ---------------------------------------
@dataclasses.dataclass(frozen=True)
class Checkpoint:
    """A network evaluated as it is (a sweep member's or an extra entry's checkpoint)."""
    checkpoint: str
    epochs: float | None = None     # its training epochs (for the report)
    release: bool | None = None     # a release network (default: a .pt file)


@dataclasses.dataclass(frozen=True)
class Training:
    """A sweep member trained here from random init (a thinjax.main config)."""
    train: str
    overrides: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Scheduled:
    """Pruning inside a training run (a configs/prune_*.py), optionally from `base` and
    to a sweep member's cost (`match`)."""
    train: str
    overrides: tuple[str, ...] = ()
    base: str | None = None
    match: str | None = None
    match_on: str = "macs"


@dataclasses.dataclass(frozen=True)
class OneShot:
    """`base` pruned one-shot by `criterion` to the cost of the sweep member `match`."""
    base: str
    criterion: str
    match: str
    allocation: str = "global"
    round_to: int = 1
    match_on: str = "macs"
    recalibrate_bn: int = 0


@dataclasses.dataclass(frozen=True)
class FineTune:
    """The pruned network of run `source` (a `OneShot`) trained `epochs` further."""
    source: str
    epochs: float
    overrides: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Sparse:
    """A sparse-training method of config.budget.sparse (its schedule over fractions of
    the fine-tune budget)."""
    name: str
    criterion: str
    schedule: str = "gradual"
    end: float = 0.5
    every: float = 0.05
    overrides: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Arm:
    """A run of config.budget: `arm` at target width `width` (cost of `target`)."""
    arm: str
    target: str
    width: int
    criterion: str | None = None
    seed: int | None = None
    plan_from: str | None = None     # the one-shot run whose plan (and weights) it takes
    sparse: Sparse | None = None


Spec = Checkpoint | Training | Scheduled | OneShot | FineTune | Arm


@dataclasses.dataclass(frozen=True)
class StudyRun:
    id: str
    kind: str      # thin | pruned | extra
    name: str
    method: str
    spec: Spec


def typed(cls, entry, where: str, drop: tuple[str, ...] = ("name", "method")):
    """`cls` from a config entry (a dict): lists become tuples; an unknown key is refused
    naming the entry and the valid keys."""
    names = {f.name for f in dataclasses.fields(cls)}
    d = {k: tuple(v) if isinstance(v, list) else v for k, v in dict(entry).items()
         if k not in drop}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; valid: "
                          f"{', '.join(sorted(names | set(drop)))}")
    try:
        return cls(**d)
    except TypeError as e:
        raise ConfigError(f"{where}: {e}") from None


def slug(s: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", s.lower()).strip("-")


def release_file(cfg, arch: str, width: int, dataset: str) -> str:
    """The release checkpoint of `arch` at `width`, by the release's file naming
    (``{arch}_width{w}_{dataset}_ema.pt`` in ``release_dir``)."""
    return "{release}/" + f"{arch}_width{width}_{dataset}_ema.pt"


def member_name(arch: str, width: int) -> str:
    return f"ThinResNet-{arch.removeprefix('resnet')} w={width}"


def sweep_entries(cfg) -> list[dict]:
    """``cfg.sweep`` plus ``cfg.sweep_range`` = {"arch", "widths", "dataset", "epochs"}: one
    release checkpoint per width (a dense sweep)."""
    out = [dict(s) for s in cfg.get("sweep", ())]
    r = cfg.get("sweep_range")
    if r:
        for w in r["widths"]:
            out.append({"name": member_name(r["arch"], w), "release": True,
                        "checkpoint": release_file(cfg, r["arch"], w, r["dataset"]),
                        "epochs": r.get("epochs", 600)})
    return out


def _sweep_run(s: dict) -> StudyRun:
    where = f"config.sweep entry {s.get('name')!r}"
    spec = typed(Checkpoint, s, where) if s.get("checkpoint") else typed(
        Training, s, where, drop=("name", "method", "epochs"))
    return StudyRun(f"thin-{slug(s['name'])}", "thin", s["name"], "ThinResNet", spec)


def _pruning_runs(p) -> list[StudyRun]:
    runs = []
    for crit in p["criteria"]:
        for m in p["match"]:
            base_id = f"prune-{slug(crit)}-{slug(p['allocation'])}-to-{slug(m)}"
            name = f"{crit} {p['allocation']} @ {m} {p.get('match_on', 'macs')}"
            spec = OneShot(base=p["base"], criterion=crit, match=m, allocation=p["allocation"],
                           round_to=int(p.get("round_to", 1)),
                           match_on=p.get("match_on", "macs"),
                           recalibrate_bn=int(p.get("recalibrate_bn", 0)))
            runs.append(StudyRun(base_id, "pruned", name,
                                 f"{crit} ({p['allocation']}), no fine-tune", spec))
            for ep in p.get("finetune_epochs", ()):
                runs.append(StudyRun(
                    f"{base_id}-ft{slug(str(ep))}", "pruned", f"{name} + {ep:g} ep",
                    f"{crit} ({p['allocation']}) + {ep:g}-epoch fine-tune",
                    FineTune(base_id, float(ep), tuple(p.get("finetune_overrides", ())))))
    return runs


def plan_runs(cfg) -> list[StudyRun]:
    runs = [_sweep_run(s) for s in sweep_entries(cfg)]
    p = cfg.get("pruning")
    if p and p.get("base"):
        runs += _pruning_runs(p)
    for t in cfg.get("schedule_runs", ()):
        runs.append(StudyRun(f"sched-{slug(t['name'])}", "pruned", t["name"], t["method"],
                             typed(Scheduled, t, f"config.schedule_runs entry {t['name']!r}")))
    for e in cfg.get("extra", ()):
        runs.append(StudyRun(f"extra-{slug(e['name'])}", "extra", e["name"], e["method"],
                             typed(Checkpoint, e, f"config.extra entry {e['name']!r}")))
    if cfg.get("budget"):
        runs += budget_plan(cfg)
    ids = [r.id for r in runs]
    dup = {i for i in ids if ids.count(i) > 1}
    if dup:
        raise ConfigError(f"study runs need distinct names; repeated: {sorted(dup)} (rename "
                          "the sweep, extra or schedule_runs entries)")
    return runs


# -- arms of equal budget (config.budget) -----------------------------------------------
ARMS = ("pruned", "thin+ft", "pruned+ft", "gradual", "sparse", "scratch")


def _seeds(b, arm: str) -> tuple:
    """budget.noise_seeds for the arms in budget.noise_arms (thin+ft, pruned+ft, gradual,
    sparse, scratch-uniform, scratch), budget.seeds for the others."""
    return tuple(b.get("noise_seeds", (0, 1))) if arm in b.get("noise_arms", ()) else \
        tuple(b.get("seeds", (0,)))


def _check_budget(b) -> None:
    unknown = [a for a in b.get("arms", ARMS) if a not in ARMS]
    missing = [c for c in list(b.get("gradual_criteria", ())) + list(
        b.get("scratch_criteria", ())) if c not in b["criteria"]]
    if unknown or missing:
        raise ConfigError(f"config.budget: unknown arms {unknown} (use {', '.join(ARMS)}) / "
                          f"gradual or scratch criteria {missing} not in budget.criteria "
                          "(the one-shot pruning of each criterion gives the scratch plan)")


def budget_plan(cfg) -> list[StudyRun]:
    """The runs of config.budget, arm by arm (each arm over every target before the next
    arm, so a study stopped early has whole arms): one-shot pruning (the plans), thin+ft,
    pruned+ft, gradual, sparse and scratch."""
    b = cfg.budget
    _check_budget(b)
    arms, arch, E, B = b.get("arms", ARMS), b["arch"], b["finetune_epochs"], b["scratch_epochs"]
    out = {a: [] for a in ARMS}
    for w in b["targets"]:
        tgt, t = member_name(arch, w), f"w={w}"
        common = dict(target=tgt, width=w)
        for c in b["criteria"]:
            out["pruned"].append(StudyRun(f"prune-{slug(c)}-to-w{w}", "pruned",
                                          f"pruned {c} -> {t}",
                                          f"{c} ({b['allocation']}), one-shot, no fine-tune",
                                          Arm(**common, arm="pruned", criterion=c)))
            out["pruned+ft"] += [StudyRun(f"pruned-ft-{slug(c)}-w{w}-s{s}", "pruned",
                                     f"pruned+ft {c} -> {t}", f"{c} one-shot + {E:g} ep",
                                     Arm(**common, arm="pruned+ft", criterion=c, seed=s,
                                          plan_from=f"prune-{slug(c)}-to-w{w}"))
                                 for s in _seeds(b, "pruned+ft")]
        out["thin+ft"] += [StudyRun(f"thin-ft-w{w}-s{s}", "thin", f"thin+ft {t}",
                               f"ThinResNet {t} + {E:g} ep", Arm(**common, arm="thin+ft", seed=s))
                           for s in _seeds(b, "thin+ft")]
        for c in b.get("gradual_criteria", b["criteria"]):
            out["gradual"] += [StudyRun(f"gradual-{slug(c)}-w{w}-s{s}", "pruned",
                                        f"gradual {c} -> {t}", f"{c} gradual over {E:g} ep",
                                   Arm(**common, arm="gradual", criterion=c, seed=s))
                               for s in _seeds(b, "gradual")]
        for entry in b.get("sparse", ()):
            sp = typed(Sparse, entry, f"config.budget.sparse entry {entry['name']!r}", drop=())
            out["sparse"] += [StudyRun(f"sparse-{slug(sp.name)}-w{w}-s{s}", "pruned",
                                       f"{sp.name} -> {t}", f"{sp.name} over {E:g} ep",
                                       Arm(**common, arm=sp.name, criterion=sp.criterion,
                                           sparse=sp, seed=s))
                              for s in _seeds(b, "sparse")]
        out["scratch"] += [StudyRun(f"scratch-uniform-w{w}-s{s}", "thin", f"scratch uniform {t}",
                               f"ThinResNet {t} from scratch, {B:g} ep",
                               Arm(**common, arm="scratch-uniform", seed=s))
                           for s in _seeds(b, "scratch-uniform")]
        for c in b.get("scratch_criteria", b["criteria"]):
            out["scratch"] += [StudyRun(f"scratch-{slug(c)}-w{w}-s{s}", "pruned",
                                   f"scratch {c} plan -> {t}", f"{c} plan from scratch, {B:g} ep",
                                   Arm(**common, arm="scratch-pruned", criterion=c, seed=s,
                                        plan_from=f"prune-{slug(c)}-to-w{w}"))
                               for s in _seeds(b, "scratch")]
    return [r for a in ARMS if a in arms or a == "pruned" for r in out[a]]


def entry_spec(entry, target_kind: str, target: float) -> prune_spec.PruneSpec:
    """The `PruneSpec` of a study entry (a config dict or a `OneShot`) that prunes one-shot
    (criterion, allocation, round_to) to `target` in `target_kind` units."""
    if dataclasses.is_dataclass(entry):
        entry = dataclasses.asdict(entry)
    return prune_spec.from_config(dict(
        criterion=entry["criterion"], allocation=entry.get("allocation", "global"),
        round_to=entry.get("round_to", 1), target_kind=target_kind, target=float(target)),
        where=f"study entry {entry.get('name', '')!r}: ")
