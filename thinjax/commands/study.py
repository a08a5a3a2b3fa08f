"""The study as one command: a ThinResNet width sweep against pruned wide networks at equal
cost, with published results beside them.

    python -m thinjax.study --config=configs/study_cifar10_r56.py --workdir=DIR \\
        [--report_dir=docs/study_cifar10_r56] [--config.data.name=...] [--json]
    thinjax-study ...                         (the same, as a console script)

The config lists
  * ``sweep``: ThinResNets, each an existing checkpoint (``checkpoint``: a release .pt, a
    thinjax checkpoint or a finished training workdir) or a training run (``train``: a
    config file, ``overrides``: its --config flags), evaluated on ``data``;
  * ``pruning``: a wide ``base`` checkpoint pruned with each of ``criteria`` (allocation,
    round_to, BN recalibration as configured) to the MACs (or params, ``match_on``) of each
    sweep member named in ``match``, without fine-tuning and, for each of
    ``finetune_epochs``, after fine-tuning (the converted network's own config);
  * ``schedule_runs``: pruning inside training (``train``: a configs/prune_*.py file, its
    one-shot / iterative / gradual schedule and criterion; ``base``: the checkpoint it
    starts from; ``match``: set its target to a sweep member's MACs or params);
  * ``extra``: networks from elsewhere (your own pruning method's checkpoints) placed on the
    same plot;
  * ``sweep_range``: {arch, widths, dataset}: the release checkpoint of every width (a dense
    sweep; files found in ``release_dir`` by the release's naming);
  * ``budget``: arms of equal training budget per target cost (``budget_plan``): the
    release ThinResNet fine-tuned E epochs (thin+ft), the wide release network pruned
    one-shot then fine-tuned E epochs (pruned+ft), pruned gradually or by a sparse-training
    schedule during E epochs (gradual, sparse), and each pruned plan against the uniform
    ThinResNet, both trained B epochs from scratch; seeds per arm;
  * ``literature``: which rows of thinjax/assets/literature.csv to show;
  * ``domain``, ``not_run``: sentences for the report's Limits section.
Every run keeps its result in DIR/runs/<run id>/row.json: a rerun skips finished runs; a run
that fails is reported (DIR/runs/<id>/error.txt) and the others go on (exit status 1 at the
end). Outputs: DIR/results.csv (report.COLUMNS: the network, its cost, its top-1 and its
budget: init source and its epochs, epochs here, images seen, recipe, seed, EMA or raw),
DIR/literature.csv, DIR/acc_vs_macs.{png,svg}, DIR/acc_vs_params.{png,svg} and DIR/report.md
(also written to --report_dir). ``--from_csv=FILE`` rebuilds them from a results.csv alone.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import time

from absl import flags
from ml_collections import config_flags

from thinjax import fs, report
from thinjax.commands import cli
from thinjax.errors import CheckpointError, ConfigError
from thinjax.prune import spec as prune_spec
from thinjax.workdir import locked

_CONFIG = config_flags.DEFINE_config_file("config", None, "study config (configs/study_*.py)")
_WORKDIR = flags.DEFINE_string("workdir", None, "output directory; rerun to continue")
_REPORT_DIR = flags.DEFINE_string("report_dir", None, "also write the report and plots here")
_FROM_CSV = flags.DEFINE_string("from_csv", None, "rebuild the report from this results.csv "
                                 "(no runs; an older file gets its budget columns filled)")
_JSON = cli.define_json()
flags.mark_flags_as_required(["config", "workdir"])

LITERATURE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets",
                          "literature.csv")


@dataclasses.dataclass
class Run:
    id: str
    kind: str      # thin | pruned | extra
    name: str
    method: str
    spec: dict


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


def plan_runs(cfg) -> list[Run]:
    runs = []
    for s in sweep_entries(cfg):
        runs.append(Run(f"thin-{slug(s['name'])}", "thin", s["name"], "ThinResNet", dict(s)))
    p = cfg.get("pruning")
    if p and p.get("base"):
        for crit in p["criteria"]:
            for m in p["match"]:
                base_id = f"prune-{slug(crit)}-{slug(p['allocation'])}-to-{slug(m)}"
                name = f"{crit} {p['allocation']} @ {m} {p.get('match_on', 'macs')}"
                spec = {**dict(p), "criterion": crit, "match": m}
                runs.append(Run(base_id, "pruned", name, f"{crit} ({p['allocation']}), "
                                "no fine-tune", spec))
                for ep in p.get("finetune_epochs", ()):
                    runs.append(Run(f"{base_id}-ft{slug(str(ep))}", "pruned",
                                    f"{name} + {ep:g} ep",
                                    f"{crit} ({p['allocation']}) + {ep:g}-epoch fine-tune",
                                    {**spec, "epochs": float(ep), "from": base_id}))
    for t in cfg.get("schedule_runs", ()):
        runs.append(Run(f"sched-{slug(t['name'])}", "pruned", t["name"], t["method"],
                        {**dict(t), "scheduled": True}))
    for e in cfg.get("extra", ()):
        runs.append(Run(f"extra-{slug(e['name'])}", "extra", e["name"], e["method"], dict(e)))
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


def budget_plan(cfg) -> list[Run]:
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
            out["pruned"].append(Run(f"prune-{slug(c)}-to-w{w}", "pruned", f"pruned {c} -> {t}",
                                     f"{c} ({b['allocation']}), one-shot, no fine-tune",
                                     dict(common, arm="pruned", criterion=c)))
            out["pruned+ft"] += [Run(f"pruned-ft-{slug(c)}-w{w}-s{s}", "pruned",
                                     f"pruned+ft {c} -> {t}", f"{c} one-shot + {E:g} ep",
                                     dict(common, arm="pruned+ft", criterion=c, seed=s,
                                          plan_from=f"prune-{slug(c)}-to-w{w}"))
                                 for s in _seeds(b, "pruned+ft")]
        out["thin+ft"] += [Run(f"thin-ft-w{w}-s{s}", "thin", f"thin+ft {t}",
                               f"ThinResNet {t} + {E:g} ep", dict(common, arm="thin+ft", seed=s))
                           for s in _seeds(b, "thin+ft")]
        for c in b.get("gradual_criteria", b["criteria"]):
            out["gradual"] += [Run(f"gradual-{slug(c)}-w{w}-s{s}", "pruned", f"gradual {c} -> {t}",
                                   f"{c} gradual over {E:g} ep",
                                   dict(common, arm="gradual", criterion=c, seed=s))
                               for s in _seeds(b, "gradual")]
        for sp in b.get("sparse", ()):
            out["sparse"] += [Run(f"sparse-{slug(sp['name'])}-w{w}-s{s}", "pruned",
                                  f"{sp['name']} -> {t}", f"{sp['name']} over {E:g} ep",
                                  dict(common, arm=sp["name"], criterion=sp["criterion"],
                                       sparse=dict(sp), seed=s))
                              for s in _seeds(b, "sparse")]
        out["scratch"] += [Run(f"scratch-uniform-w{w}-s{s}", "thin", f"scratch uniform {t}",
                               f"ThinResNet {t} from scratch, {B:g} ep",
                               dict(common, arm="scratch-uniform", seed=s))
                           for s in _seeds(b, "scratch-uniform")]
        for c in b.get("scratch_criteria", b["criteria"]):
            out["scratch"] += [Run(f"scratch-{slug(c)}-w{w}-s{s}", "pruned",
                                   f"scratch {c} plan -> {t}", f"{c} plan from scratch, {B:g} ep",
                                   dict(common, arm="scratch-pruned", criterion=c, seed=s,
                                        plan_from=f"prune-{slug(c)}-to-w{w}"))
                               for s in _seeds(b, "scratch")]
    return [r for a in ARMS if a in arms or a == "pruned" for r in out[a]]



def entry_spec(entry: dict, target_kind: str, target: float) -> prune_spec.PruneSpec:
    """The `PruneSpec` of a study entry that prunes one-shot (criterion, allocation,
    round_to) to `target` in `target_kind` units."""
    return prune_spec.from_config(dict(
        criterion=entry["criterion"], allocation=entry.get("allocation", "global"),
        round_to=entry.get("round_to", 1), target_kind=target_kind, target=float(target)),
        where=f"study entry {entry.get('name', '')!r}: ")

class Study:
    def __init__(self, cfg, workdir: str):
        self.cfg, self.workdir = cfg, os.path.abspath(workdir)
        self.rows: dict[str, dict] = {}
        self.failures: list[str] = []
        self.from_csv: str | None = None

    # -- the runs ---------------------------------------------------------------------
    def run_dir(self, run_id: str) -> str:
        return os.path.join(self.workdir, "runs", run_id)

    def evaluate(self, checkpoint: str) -> dict:
        from thinjax.evaluation import evaluate_checkpoint
        d = self.cfg.data
        return evaluate_checkpoint(checkpoint, d.name, d.split, d.eval_batch_size,
                                   d.get("data_dir"), progress=True)

    def main_cmd(self, config: str, workdir: str, overrides) -> list[str]:
        d = self.cfg.data
        cmd = [sys.executable, "-m", "thinjax.main", f"--config={config}",
               f"--workdir={workdir}", f"--config.data.name={d.name}",
               f"--config.data.eval_split={d.split}"]
        if d.get("data_dir"):
            cmd.append(f"--config.data.data_dir={d.data_dir}")
        return cmd + list(overrides)

    def subprocess(self, cmd: list[str]) -> dict:
        """Runs a thinjax.main command (from main_cmd); its results.json."""
        workdir = next(a.split("=", 1)[1] for a in cmd if a.startswith("--workdir="))
        print("+", " ".join(cmd[1:]), flush=True)
        r = subprocess.run(cmd, stderr=subprocess.PIPE, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd[1:4])} exited {r.returncode}: "
                               f"{r.stderr.strip().splitlines()[-1] if r.stderr else ''}")
        with open(os.path.join(workdir, "results.json")) as f:
            return json.load(f)

    def resolve(self, path: str) -> str:
        """'{release}', '{sweep_dir}' and '{base}' in a path stand for the config's
        release_dir, sweep_dir and base."""
        for name, key in (("release", "release_dir"), ("sweep_dir", "sweep_dir"),
                          ("base", "base")):
            if self.cfg.get(key) is not None:
                path = path.replace("{" + name + "}", str(self.cfg.get(key)))
        return path

    def execute(self, run: Run) -> dict:
        """The run's row, with its budget columns (report.BUDGET)."""
        if run.spec.get("arm"):
            return self.execute_budget(run)
        row = self.execute_plain(run)
        if run.kind == "extra":
            return {**row, "arm": "extra", "init": row["source"], "init_epochs":
                    row.get("epochs"), "epochs": 0.0, "images_seen": 0, "recipe": "-",
                    "weights": "?"}
        if run.kind == "thin" and run.spec.get("checkpoint"):
            release = run.spec.get("release", row["source"].endswith(".pt"))
            return {**row, "arm": "release" if release else "thin", "init": row["source"],
                    "init_epochs": row.get("epochs"), "epochs": 0.0, "images_seen": 0,
                    "recipe": "-", "weights": "ema"}
        if run.kind == "thin":  # trained here from scratch
            return {**row, "arm": "thin", "init": "random init", "init_epochs": 0.0,
                    "images_seen": None, "recipe": os.path.basename(run.spec["train"]),
                    "weights": "ema"}
        p = self.cfg.get("pruning") or {}
        row = report.fill_budget(
            row, self.resolve(run.spec.get("base") or p.get("base", "?")),
            float(self.cfg.get("base_epochs", 600)),
            self.cfg.get("finetune_recipe", "the converted network's own config"),
            int(self.cfg.data.get("train_images", 50_000)))
        if run.spec.get("scheduled"):
            row.update(arm="scheduled", recipe=os.path.basename(run.spec["train"]))
        return row

    def execute_plain(self, run: Run) -> dict:
        s, rd = run.spec, self.run_dir(run.id)
        row = {"name": run.name, "method": run.method, "kind": run.kind, "source": run.id}
        if run.kind in ("thin", "extra") and s.get("checkpoint"):
            ck = self.resolve(s["checkpoint"])
            if not (os.path.exists(ck) or "://" in ck or ck.startswith("zoo:")):
                raise CheckpointError(f"checkpoint {ck} (run {run.id}) not found; fix its "
                                      "path in the study config or set --config.release_dir")
            r = self.evaluate(ck)
            return {**row, "params": r["params"], "macs": r["macs"], "top1": r["top1"],
                    "top5": r["top5"], "epochs": s.get("epochs"),
                    "source": os.path.basename(ck.rstrip("/"))}
        if run.kind == "thin":
            res = self.subprocess(self.main_cmd(s["train"], os.path.join(rd, "train"),
                                                s.get("overrides", ())))
            ema = "ema_eval_top1" in res
            return {**row, "params": res["params"], "macs": res["macs"],
                    "top1": res["ema_eval_top1" if ema else "eval_top1"],
                    "top5": res["ema_eval_top5" if ema else "eval_top5"],
                    "epochs": res["epochs"], "source": os.path.join(rd, "train")}
        if s.get("scheduled"):  # pruning inside a training run (oneshot/iterative/gradual)
            over = list(s.get("overrides", ()))
            if s.get("base"):
                over.append(f"--config.init_from={self.resolve(s['base'])}")
            if s.get("match"):
                on = s.get("match_on", "macs")
                over += [f"--config.prune.target_kind={on}",
                         f"--config.prune.target={self.target_of(s['match'], on)}"]
            res = self.subprocess(self.main_cmd(s["train"], os.path.join(rd, "train"), over))
            return {**row, "params": res["params"], "macs": res["macs"],
                    "top1": res["eval_top1"], "top5": res["eval_top5"],
                    "epochs": res["epochs"], "source": run.id + " (raw weights)"}
        if run.kind == "pruned" and "from" not in s:
            return self.prune(run, row)
        if run.kind == "pruned":
            pruned = os.path.join(self.run_dir(s["from"]), "pruned")
            if not os.path.isdir(pruned):
                raise RuntimeError(f"needs the pruned network of run {s['from']}, which did "
                                   "not finish")
            extra = [f"--config.train.epochs={s['epochs']}"] + list(s.get("finetune_overrides", ()))
            res = self.subprocess(self.main_cmd(os.path.join(pruned, "config.py"),
                                                os.path.join(rd, "finetune"), extra))
            return {**row, "params": res["params"], "macs": res["macs"],
                    "top1": res["eval_top1"], "top5": res["eval_top5"],
                    "epochs": res["epochs"], "source": run.id + " (raw weights)"}
        raise ConfigError(f"run {run.id}: give a checkpoint or a train config in the study "
                          "config")

    def target_of(self, member: str, on: str) -> float:
        row = self.rows.get(f"thin-{slug(member)}")
        if row is None:
            raise RuntimeError(f"matching sweep member {member!r} has no result (it must be in "
                               "config.sweep and finish first)")
        return float(row[on])

    def prune(self, run: Run, row: dict) -> dict:
        from thinjax.conversion import convert
        s, d = run.spec, self.cfg.data
        on = s.get("match_on", "macs")
        out = os.path.join(self.run_dir(run.id), "pruned")
        spec = entry_spec(s, on, self.target_of(s["match"], on))
        summ = convert(self.resolve(s["base"]), out, spec=spec, data=d.name,
                       data_dir=d.get("data_dir"),
                       split=d.split, batch_size=d.eval_batch_size,
                       recalibrate_bn=s.get("recalibrate_bn", 0), overwrite=True,
                       evaluate_before=False)
        a = summ["after"]
        return {**row, "params": a["params"], "macs": a["macs"], "top1": a["top1"],
                "top5": a["top5"], "epochs": 0, "source": run.id}

    # -- arms of equal budget -----------------------------------------------------------
    def release_path(self, width: int) -> str:
        b = self.cfg.budget
        path = self.resolve(release_file(self.cfg, b["arch"], width, b.get("dataset", "cifar10")))
        if not os.path.exists(path):
            raise CheckpointError(f"release checkpoint {path} not found (budget arm, width "
                                  f"{width}); set --config.release_dir to the folder that "
                                  "holds the release's *_ema.pt files (MANIFEST.tsv lists them)")
        return path

    def plan_dir(self, run_id: str) -> str:
        d = os.path.join(self.run_dir(run_id), "pruned")
        if not os.path.isdir(d):
            raise CheckpointError(f"needs the pruned plan of run {run_id}, which did not finish "
                               f"(see {self.run_dir(run_id)}/error.txt; rerun the study)")
        return d

    def arm_overrides(self, s: dict) -> tuple[list[str], str, float]:
        """(--config flags, init source, init epochs) of a training arm."""
        b, arm = self.cfg.budget, s["arm"]
        rel = float(b.get("release_epochs", 600))
        base_w = b.get("base_width", 16)
        if arm == "thin+ft":
            ck = self.release_path(s["width"])
            return ([f"--config.model.width={s['width']}", f"--config.init_from={ck}"],
                    os.path.basename(ck), rel)
        if arm == "pruned+ft":
            d = self.plan_dir(s["plan_from"])
            return ([f"--config.model.plan_file={d}/plan.json", f"--config.init_from={d}/model"],
                    f"{os.path.basename(self.release_path(base_w))} pruned ({s['plan_from']})",
                    rel)
        if arm == "scratch-uniform":
            return [f"--config.model.width={s['width']}"], "random init", 0.0
        if arm == "scratch-pruned":
            d = self.plan_dir(s["plan_from"])
            return [f"--config.model.plan_file={d}/plan.json"], "random init", 0.0
        ck = self.release_path(base_w)  # gradual or a sparse-training method
        return ([f"--config.model.width={base_w}", f"--config.init_from={ck}"]
                + self.prune_flags(s), os.path.basename(ck), rel)

    def prune_flags(self, s: dict) -> list[str]:
        """Pruning inside the fine-tune: gradual (Zhu & Gupta) or a sparse-training entry of
        budget.sparse (schedule, criterion, fractions of E, its own flags)."""
        b, E = self.cfg.budget, float(self.cfg.budget["finetune_epochs"])
        sp = s.get("sparse") or {"schedule": "gradual", "end": b.get("gradual_end", 0.5),
                                 "every": b.get("gradual_every", 0.05)}
        on = b.get("match_on", "macs")
        spec = prune_spec.PruneSpec(
            schedule=sp["schedule"], criterion=s["criterion"], allocation=b["allocation"],
            round_to=int(b.get("round_to", 1)), target_kind=on,
            target=float(round(self.target_of(s["target"], on))), start_epoch=0.0,
            end_epoch=float(f"{sp['end'] * E:.6g}"), every_epochs=float(f"{sp['every'] * E:.6g}"))
        return spec.to_flags() + list(sp.get("overrides", ()))

    def recipe_flags(self, epochs: float, seed: int) -> list[str]:
        b = self.cfg.budget
        return [f"--config.model.name={b['arch']}", f"--config.seed={seed}",
                f"--config.train.epochs={epochs:g}", f"--config.train.eval_every_epochs={epochs:g}",
                f"--config.optim.warmup_epochs={b.get('warmup_fraction', 0.05) * epochs:.6g}"
                ] + list(b.get("recipe_overrides", ()))

    def execute_budget(self, run: Run) -> dict:
        s, b = run.spec, self.cfg.budget
        row = {"name": run.name, "method": run.method, "kind": run.kind, "arm": s["arm"],
               "target": s["target"], "criterion": s.get("criterion"), "source": run.id}
        if s["arm"] == "pruned":
            return self.prune_oneshot(run, row)
        over, init, init_ep = self.arm_overrides(s)
        ep = float(b["scratch_epochs"] if s["arm"].startswith("scratch") else
                   b["finetune_epochs"])
        wd = os.path.join(self.run_dir(run.id), "train")
        res = self.subprocess(self.main_cmd(b["recipe"], wd, self.recipe_flags(ep, s["seed"])
                                            + over))
        with open(os.path.join(wd, "config.json")) as f:
            batch = json.load(f)["train"]["batch_size"]
        want_ema = b.get("weights", "ema") == "ema" and "ema_eval_top1" in res
        return {**row, "params": res["params"], "macs": res["macs"],
                "top1": res["ema_eval_top1" if want_ema else "eval_top1"],
                "top5": res["ema_eval_top5" if want_ema else "eval_top5"],
                "init": init, "init_epochs": init_ep, "epochs": res["epochs"],
                "images_seen": int(res["steps"]) * int(batch), "recipe": b["recipe_name"],
                "seed": s["seed"], "weights": "ema" if want_ema else "raw"}

    def prune_oneshot(self, run: Run, row: dict) -> dict:
        b = self.cfg.budget
        base = self.release_path(b.get("base_width", 16))
        spec = {"base": base, "criterion": run.spec["criterion"], "match": run.spec["target"],
                "allocation": b["allocation"], "round_to": b.get("round_to", 1),
                "match_on": b.get("match_on", "macs"),
                "recalibrate_bn": b.get("recalibrate_bn", 0)}
        r = self.prune(Run(run.id, run.kind, run.name, run.method, spec), row)
        return {**r, "init": os.path.basename(base),
                "init_epochs": float(b.get("release_epochs", 600)), "epochs": 0.0,
                "images_seen": 0, "recipe": "-", "seed": None, "weights": "ema"}

    def run_all(self) -> None:
        runs = plan_runs(self.cfg)
        t0 = time.perf_counter()
        for i, run in enumerate(runs):
            done = os.path.join(self.run_dir(run.id), "row.json")
            head = f"[{i + 1}/{len(runs)}] {run.id}"
            key = self.run_key(run)
            if os.path.exists(done):
                row = fs.read_row(done)
                if row.get("key", key) == key:
                    self.rows[run.id] = row
                    print(f"{head}: finished earlier, skipped", flush=True)
                    continue
                aside = fs.stale_name(self.run_dir(run.id))
                os.replace(self.run_dir(run.id), aside)
                print(f"{head}: its row was made with another config entry (kept in {aside}); "
                      "rerunning", flush=True)
            os.makedirs(self.run_dir(run.id), exist_ok=True)
            t = time.perf_counter()
            print(f"{head}: running", flush=True)
            try:
                row = self.execute(run)
            except Exception as e:  # report it; the other runs go on
                msg = f"{run.id}: {type(e).__name__}: {e}"
                self.failures.append(msg)
                with open(os.path.join(self.run_dir(run.id), "error.txt"), "w") as f:
                    f.write(msg + "\n")
                print(f"{head}: FAILED: {msg}", flush=True)
                continue
            row["key"] = key
            self.rows[run.id] = row
            with open(done + ".tmp", "w") as f:
                json.dump(row, f, indent=1)
            os.replace(done + ".tmp", done)
            err = os.path.join(self.run_dir(run.id), "error.txt")
            if os.path.exists(err):
                os.remove(err)
            el = time.perf_counter() - t0
            print(f"{head}: top-1 {row['top1']:.2f}% in {time.perf_counter() - t:.0f} s "
                  f"(elapsed {el:.0f} s)", flush=True)

    def run_key(self, run: Run) -> str:
        """A hash of everything that determines a run's row: its entry (paths resolved),
        the checkpoint it reads (by content), the data's name and split, and the config
        sections it reads; a changed entry reruns the run."""
        import hashlib
        spec = {k: self.resolve(v) if isinstance(v, str) else v for k, v in run.spec.items()}
        ck = spec.get("checkpoint") or spec.get("base")
        digest = None
        if isinstance(ck, str) and os.path.isfile(ck):
            from thinjax import zoo
            digest = zoo.digests(ck)["sha256"]
        d = self.cfg.data
        blob = json.dumps([run.kind, run.name, spec, digest, os.path.basename(
            str(d.name).rstrip("/")), d.get("split"), self.cfg.get("budget") and
            self.cfg.budget.to_dict(), self.cfg.get("pruning")], sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    # -- outputs ----------------------------------------------------------------------
    def literature(self) -> list[dict]:
        lit = self.cfg.get("literature")
        if not lit:
            return []
        with open(lit.get("file") or LITERATURE, newline="") as f:
            rows = list(csv.DictReader(f))
        return [r for r in rows if r["network"] == lit["network"]
                and r["dataset"] == lit["dataset"]]

    def write_outputs(self, report_dir: str | None = None) -> dict:
        rows = [dict(r) for r in self.rows.values()]
        lit = self.literature()
        report.write_csv(os.path.join(self.workdir, "results.csv"), rows)
        if lit:
            with open(os.path.join(self.workdir, "literature.csv"), "w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=list(lit[0]))
                w.writeheader()
                w.writerows(lit)
        title, label = self.cfg.title, self.cfg.get("eval_label", self.cfg.data.name)
        plots = {}
        if rows:
            for key, stem in (("macs", "acc_vs_macs"), ("params", "acc_vs_params")):
                plots[key] = report.plot(rows, lit, os.path.join(self.workdir, stem), key,
                                         title, label)
        md = report.markdown(title, rows, lit, plots, self.failures, self.cfg.get("notes", ""),
                             self.cfg.get("domain", ""), self.not_run())
        with open(os.path.join(self.workdir, "report.md"), "w") as f:
            f.write(md)
        if report_dir:
            self.copy_outputs(report_dir, plots)
        return {"rows": rows, "failures": self.failures, "report":
                os.path.join(self.workdir, "report.md")}

    def not_run(self) -> list[str]:
        """The config's own list (cfg.not_run) and the planned runs that have no row and did
        not fail (the study was stopped before them)."""
        if self.from_csv:
            return list(self.cfg.get("not_run", ()))
        failed = {f.split(":", 1)[0] for f in self.failures}
        left = [r.id for r in plan_runs(self.cfg) if r.id not in self.rows
                and r.id not in failed]
        out = list(self.cfg.get("not_run", ()))
        if left:
            out.append(f"{len(left)} planned run(s) not reached yet (rerun the command to "
                       f"continue): {', '.join(left)}")
        return out

    def copy_outputs(self, report_dir: str, plots: dict) -> None:
        os.makedirs(report_dir, exist_ok=True)
        for name in ["report.md", "results.csv", "literature.csv"] + \
                [os.path.basename(p) for ps in plots.values() for p in ps]:
            src = os.path.join(self.workdir, name)
            if os.path.exists(src):
                shutil.copy(src, os.path.join(report_dir, name))

    def load_csv(self, path: str) -> None:
        """Rows from an earlier results.csv (budget columns filled for an older file), to
        rebuild the report without running anything."""
        self.from_csv = path
        p = self.cfg.get("pruning") or {}
        for r in report.read_csv(path):
            r = report.fill_budget(r, self.resolve(p.get("base", "?")),
                                   float(self.cfg.get("base_epochs", 600)),
                                   self.cfg.get("finetune_recipe",
                                                "the converted network's own config"),
                                   int(self.cfg.data.get("train_images", 50_000)))
            self.rows[r["source"] + "|" + r["name"]] = r


def main(argv: list[str]) -> dict | cli.Finished:
    """Runs the study's runs (skipping finished ones), writes the outputs, returns them
    (thinjax.cli prints them with --json); exit status 1 if a run failed."""
    if len(argv) > 1:
        raise cli.UsageError(f"unexpected argument {argv[1]!r} (config values go in "
                             "--config.KEY=VALUE)")
    cfg, workdir = _CONFIG.value, _WORKDIR.value
    if os.path.lexists(workdir) and not os.path.isdir(workdir):
        raise ConfigError(f"--workdir={workdir} is a file, not a folder; choose a new --workdir")
    os.makedirs(workdir, exist_ok=True)
    with locked(workdir):  # one study process per workdir
        return _main(cfg, workdir)


def _main(cfg, workdir: str) -> dict | cli.Finished:
    if cfg.get("protocol"):  # paired seeds, LR selection, one data domain (thinjax.protocol)
        from thinjax.protocol import run_study
        out = run_study(cfg, workdir, _REPORT_DIR.value, _FROM_CSV.value,
                        log=lambda m: print(m, flush=True))
        print(f"report: {out['report']}; {len(out['rows'])} runs, "
              f"{len(out['comparisons'])} comparisons, {len(out['failures'])} failed run(s)")
        res = {"report": out["report"], "failures": out["failures"]}
        return cli.Finished(res, 1) if out["failures"] else res
    st = Study(cfg, workdir)
    if _FROM_CSV.value:
        st.load_csv(_FROM_CSV.value)
    else:
        st.run_all()
    out = st.write_outputs(_REPORT_DIR.value)
    print(f"report: {out['report']}; {len(out['rows'])} networks, "
          f"{len(out['failures'])} failed run(s)")
    for f in out["failures"]:
        print(f"  failed: {f}")
    return cli.Finished(out, 1) if out["failures"] else out


def cli_main() -> None:
    """The ``thinjax-study`` console script and ``python -m thinjax.study``."""
    cli.run(main)


if __name__ == "__main__":
    cli_main()
