"""Running a study: every run of its plan, one row each, resumable (`Study`). Every kind of
run is done the same way, as jobs (`thinjax.jobs`: the train, prune and evaluate commands,
each in its own process, logged in DIR/runs/<id>/<command>.log)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time

from thinjax import fs, jobs, report, zoo
from thinjax.errors import CheckpointError
from thinjax.prune import spec as prune_spec
from thinjax.studies.outputs import Outputs
from thinjax.studies.plan import (
    Arm,
    Checkpoint,
    FineTune,
    OneShot,
    Scheduled,
    Sparse,
    StudyRun,
    Training,
    entry_spec,
    plan_runs,
    release_file,
    slug,
)


class Study(Outputs):
    """Runs a study config's runs into WORKDIR/runs/<id>/row.json (resumable)."""
    def __init__(self, cfg, workdir: str):
        self.cfg, self.workdir = cfg, os.path.abspath(workdir)
        self.rows: dict[str, dict] = {}
        self.failures: list[str] = []
        self.from_csv: str | None = None

    # -- the runs ---------------------------------------------------------------------
    def run_dir(self, run_id: str) -> str:
        return os.path.join(self.workdir, "runs", run_id)

    def job(self, run_id: str, command: str, flags: list[str]) -> dict:
        """Every run is one or more jobs (`thinjax.jobs`: a thinjax command in its own
        process, logged in the run's folder); the command's JSON result."""
        return jobs.run(jobs.Job(command, tuple(flags),
                                 os.path.join(self.run_dir(run_id), f"{command}.log")))

    def data_flags(self, command: str) -> list[str]:
        """The study's data (config.data) as `command`'s flags."""
        d = self.cfg.data
        if command == "train":
            out = [f"--config.data.name={d.name}", f"--config.data.eval_split={d.split}"]
            return out + ([f"--config.data.data_dir={d.data_dir}"] if d.get("data_dir") else [])
        out = [f"--data={d.name}", f"--split={d.split}", f"--batch_size={d.eval_batch_size}"]
        return out + ([f"--data_dir={d.data_dir}"] if d.get("data_dir") else [])

    def train(self, run_id: str, config: str, overrides) -> dict:
        """thinjax.main with `config` in the run's train/ folder; its results."""
        wd = os.path.join(self.run_dir(run_id), "train")
        return self.job(run_id, "train", [f"--config={config}", f"--workdir={wd}",
                                          *self.data_flags("train"), *overrides])

    def resolve(self, path: str) -> str:
        """'{release}', '{sweep_dir}' and '{base}' in a path stand for the config's
        release_dir, sweep_dir and base."""
        for name, key in (("release", "release_dir"), ("sweep_dir", "sweep_dir"),
                          ("base", "base")):
            if self.cfg.get(key) is not None:
                path = path.replace("{" + name + "}", str(self.cfg.get(key)))
        return path

    def execute(self, run: StudyRun) -> dict:
        """The run's row, with its budget columns (report.BUDGET)."""
        s = run.spec
        row = {"name": run.name, "method": run.method, "kind": run.kind, "source": run.id}
        if isinstance(s, Arm):
            return self.execute_arm(run)
        if isinstance(s, Checkpoint):
            row = self.evaluate(run.id, s, row)
            if run.kind == "extra":
                return {**row, "arm": "extra", "init": row["source"], "init_epochs":
                        row.get("epochs"), "epochs": 0.0, "images_seen": 0, "recipe": "-",
                        "weights": "?"}
            release = s.release if s.release is not None else row["source"].endswith(".pt")
            return {**row, "arm": "release" if release else "thin", "init": row["source"],
                    "init_epochs": row.get("epochs"), "epochs": 0.0, "images_seen": 0,
                    "recipe": "-", "weights": "ema"}
        if isinstance(s, Training):
            res = self.train(run.id, s.train, s.overrides)
            ema = "ema_eval_top1" in res
            return {**row, **_scores(res, ema), "epochs": res["epochs"],
                    "source": os.path.join(self.run_dir(run.id), "train"), "arm": "thin",
                    "init": "random init", "init_epochs": 0.0, "images_seen": None,
                    "recipe": os.path.basename(s.train), "weights": "ema"}
        if isinstance(s, OneShot):
            row = self.prune(run.id, s, row)
        elif isinstance(s, FineTune):
            row = self.finetune(run.id, s, row)
        else:
            row = self.scheduled(run.id, s, row)
        p = self.cfg.get("pruning") or {}
        row = report.fill_budget(
            row, self.resolve(getattr(s, "base", None) or p.get("base", "?")),
            float(self.cfg.get("base_epochs", 600)),
            self.cfg.get("finetune_recipe", "the converted network's own config"),
            int(self.cfg.data.get("train_images", 50_000)))
        if isinstance(s, Scheduled):
            row.update(arm="scheduled", recipe=os.path.basename(s.train))
        return row

    def evaluate(self, run_id: str, s: Checkpoint, row: dict) -> dict:
        ck = self.resolve(s.checkpoint)
        if not (os.path.exists(ck) or "://" in ck or ck.startswith("zoo:")):
            raise CheckpointError(f"checkpoint {ck} (run {run_id}) not found; fix its "
                                  "path in the study config or set --config.release_dir")
        r = self.job(run_id, "evaluate", [f"--checkpoint={ck}", *self.data_flags("evaluate")])
        return {**row, "params": r["params"], "macs": r["macs"], "top1": r["top1"],
                "top5": r["top5"], "epochs": s.epochs,
                "source": os.path.basename(ck.rstrip("/"))}

    def scheduled(self, run_id: str, s: Scheduled, row: dict) -> dict:
        """Pruning inside a training run (one-shot, iterative or gradual schedules)."""
        over = list(s.overrides)
        if s.base:
            over.append(f"--config.init_from={self.resolve(s.base)}")
        if s.match:
            over += [f"--config.prune.target_kind={s.match_on}",
                     f"--config.prune.target={self.target_of(s.match, s.match_on)}"]
        res = self.train(run_id, s.train, over)
        return {**row, **_scores(res, False), "epochs": res["epochs"],
                "source": run_id + " (raw weights)"}

    def finetune(self, run_id: str, s: FineTune, row: dict) -> dict:
        pruned = os.path.join(self.run_dir(s.source), "pruned")
        if not os.path.isdir(pruned):
            raise RuntimeError(f"needs the pruned network of run {s.source}, which did "
                               "not finish")
        res = self.train(run_id, os.path.join(pruned, "config.py"),
                         [f"--config.train.epochs={s.epochs}", *s.overrides])
        return {**row, **_scores(res, False), "epochs": res["epochs"],
                "source": run_id + " (raw weights)"}

    def target_of(self, member: str, on: str) -> float:
        row = self.rows.get(f"thin-{slug(member)}")
        if row is None:
            raise RuntimeError(f"matching sweep member {member!r} has no result (it must be in "
                               "config.sweep and finish first)")
        return float(row[on])

    def prune(self, run_id: str, s: OneShot, row: dict) -> dict:
        """The prune command on `s.base` into the run's pruned/ folder."""
        out = os.path.join(self.run_dir(run_id), "pruned")
        spec = entry_spec(s, s.match_on, self.target_of(s.match, s.match_on))
        summ = self.job(run_id, "prune", [
            f"--checkpoint={self.resolve(s.base)}", f"--output={out}",
            *self.data_flags("prune"), f"--recalibrate_bn={s.recalibrate_bn}", "--overwrite",
            "--noevaluate_before", *spec.to_command_flags()])
        a = summ["after"]
        return {**row, "params": a["params"], "macs": a["macs"], "top1": a["top1"],
                "top5": a["top5"], "epochs": 0, "source": run_id}

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

    def arm_overrides(self, s: Arm) -> tuple[list[str], str, float]:
        """(--config flags, init source, init epochs) of a training arm."""
        b, arm = self.cfg.budget, s.arm
        rel = float(b.get("release_epochs", 600))
        base_w = b.get("base_width", 16)
        if arm == "thin+ft":
            ck = self.release_path(s.width)
            return ([f"--config.model.width={s.width}", f"--config.init_from={ck}"],
                    os.path.basename(ck), rel)
        if arm == "pruned+ft":
            d = self.plan_dir(s.plan_from)
            return ([f"--config.model.plan_file={d}/plan.json", f"--config.init_from={d}/model"],
                    f"{os.path.basename(self.release_path(base_w))} pruned ({s.plan_from})",
                    rel)
        if arm == "scratch-uniform":
            return [f"--config.model.width={s.width}"], "random init", 0.0
        if arm == "scratch-pruned":
            d = self.plan_dir(s.plan_from)
            return [f"--config.model.plan_file={d}/plan.json"], "random init", 0.0
        ck = self.release_path(base_w)  # gradual or a sparse-training method
        return ([f"--config.model.width={base_w}", f"--config.init_from={ck}"]
                + self.prune_flags(s), os.path.basename(ck), rel)

    def prune_flags(self, s: Arm) -> list[str]:
        """Pruning inside the fine-tune: gradual (Zhu & Gupta) or a sparse-training entry of
        budget.sparse (schedule, criterion, fractions of E, its own flags)."""
        b, E = self.cfg.budget, float(self.cfg.budget["finetune_epochs"])
        sp = s.sparse or Sparse(name="gradual", criterion=s.criterion,
                                end=b.get("gradual_end", 0.5), every=b.get("gradual_every", 0.05))
        on = b.get("match_on", "macs")
        spec = prune_spec.PruneSpec(
            schedule=sp.schedule, criterion=s.criterion, allocation=b["allocation"],
            round_to=int(b.get("round_to", 1)), target_kind=on,
            target=float(round(self.target_of(s.target, on))), start_epoch=0.0,
            end_epoch=float(f"{sp.end * E:.6g}"), every_epochs=float(f"{sp.every * E:.6g}"))
        return spec.to_flags() + list(sp.overrides)

    def recipe_flags(self, epochs: float, seed: int) -> list[str]:
        b = self.cfg.budget
        return [f"--config.model.name={b['arch']}", f"--config.seed={seed}",
                f"--config.train.epochs={epochs:g}", f"--config.train.eval_every_epochs={epochs:g}",
                f"--config.optim.warmup_epochs={b.get('warmup_fraction', 0.05) * epochs:.6g}"
                ] + list(b.get("recipe_overrides", ()))

    def execute_arm(self, run: StudyRun) -> dict:
        s, b = run.spec, self.cfg.budget
        row = {"name": run.name, "method": run.method, "kind": run.kind, "arm": s.arm,
               "target": s.target, "criterion": s.criterion, "source": run.id}
        if s.arm == "pruned":
            return self.prune_oneshot(run, row)
        over, init, init_ep = self.arm_overrides(s)
        ep = float(b["scratch_epochs"] if s.arm.startswith("scratch") else b["finetune_epochs"])
        res = self.train(run.id, b["recipe"], self.recipe_flags(ep, s.seed) + over)
        with open(os.path.join(self.run_dir(run.id), "train", "config.json")) as f:
            batch = json.load(f)["train"]["batch_size"]
        want_ema = b.get("weights", "ema") == "ema" and "ema_eval_top1" in res
        return {**row, **_scores(res, want_ema), "init": init, "init_epochs": init_ep,
                "epochs": res["epochs"], "images_seen": int(res["steps"]) * int(batch),
                "recipe": b["recipe_name"], "seed": s.seed,
                "weights": "ema" if want_ema else "raw"}

    def prune_oneshot(self, run: StudyRun, row: dict) -> dict:
        b = self.cfg.budget
        base = self.release_path(b.get("base_width", 16))
        spec = OneShot(base=base, criterion=run.spec.criterion, match=run.spec.target,
                       allocation=b["allocation"], round_to=int(b.get("round_to", 1)),
                       match_on=b.get("match_on", "macs"),
                       recalibrate_bn=int(b.get("recalibrate_bn", 0)))
        r = self.prune(run.id, spec, row)
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

    def run_key(self, run: StudyRun) -> str:
        """A hash of everything that determines a run's row: its entry (paths resolved),
        the checkpoint it reads (by content), the data's name and split, and the config
        sections it reads; a changed entry reruns the run."""
        spec = {k: self.resolve(v) if isinstance(v, str) else v
                for k, v in dataclasses.asdict(run.spec).items()}
        ck = spec.get("checkpoint") or spec.get("base")
        digest = None
        if isinstance(ck, str) and os.path.isfile(ck):
            digest = zoo.digests(ck)["sha256"]
        d = self.cfg.data
        budget = self.cfg.get("budget") and self.cfg.budget.to_dict()
        blob = json.dumps([run.kind, run.name, type(run.spec).__name__, spec, digest,
                           os.path.basename(str(d.name).rstrip("/")), d.get("split"), budget,
                           self.cfg.get("pruning")], sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    # -- outputs ----------------------------------------------------------------------


def _scores(res: dict, ema: bool) -> dict:
    """Cost and top-1/top-5 of a training run's results (its EMA weights' with `ema`)."""
    pre = "ema_eval" if ema else "eval"
    return {"params": res["params"], "macs": res["macs"], "top1": res[f"{pre}_top1"],
            "top5": res[f"{pre}_top5"]}
