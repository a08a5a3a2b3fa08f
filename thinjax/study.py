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
  * ``literature``: which rows of thinjax/assets/literature.csv to show.
Every run keeps its result in DIR/runs/<run id>/row.json: a rerun skips finished runs; a run
that fails is reported (DIR/runs/<id>/error.txt) and the others go on (exit status 1 at the
end). Outputs: DIR/results.csv (name, method, kind, params, macs, top1, top5, epochs,
source), DIR/literature.csv, DIR/acc_vs_macs.{png,svg}, DIR/acc_vs_params.{png,svg} and
DIR/report.md (also written to --report_dir).
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

from thinjax import cli

_CONFIG = config_flags.DEFINE_config_file("config", None, "study config (configs/study_*.py)")
_WORKDIR = flags.DEFINE_string("workdir", None, "output directory; rerun to continue")
_REPORT_DIR = flags.DEFINE_string("report_dir", None, "also write the report and plots here")
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


def plan_runs(cfg) -> list[Run]:
    runs = []
    for s in cfg.sweep:
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
    ids = [r.id for r in runs]
    dup = {i for i in ids if ids.count(i) > 1}
    if dup:
        raise ValueError(f"study runs need distinct names; repeated: {sorted(dup)}")
    return runs


class Study:
    def __init__(self, cfg, workdir: str):
        self.cfg, self.workdir = cfg, os.path.abspath(workdir)
        self.rows: dict[str, dict] = {}
        self.failures: list[str] = []

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
        s, rd = run.spec, self.run_dir(run.id)
        row = {"name": run.name, "method": run.method, "kind": run.kind, "source": run.id}
        if run.kind in ("thin", "extra") and s.get("checkpoint"):
            ck = self.resolve(s["checkpoint"])
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
        raise ValueError(f"run {run.id}: give a checkpoint or a train config")

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
        summ = convert(self.resolve(s["base"]), out, criterion=s["criterion"], target_kind=on,
                       target=self.target_of(s["match"], on), allocation=s["allocation"],
                       round_to=s.get("round_to", 1), data=d.name, data_dir=d.get("data_dir"),
                       split=d.split, batch_size=d.eval_batch_size,
                       recalibrate_bn=s.get("recalibrate_bn", 0), overwrite=True,
                       evaluate_before=False)
        a = summ["after"]
        return {**row, "params": a["params"], "macs": a["macs"], "top1": a["top1"],
                "top5": a["top5"], "epochs": 0, "source": run.id}

    def run_all(self) -> None:
        runs = plan_runs(self.cfg)
        t0 = time.perf_counter()
        for i, run in enumerate(runs):
            done = os.path.join(self.run_dir(run.id), "row.json")
            head = f"[{i + 1}/{len(runs)}] {run.id}"
            if os.path.exists(done):
                self.rows[run.id] = json.load(open(done))
                print(f"{head}: finished earlier, skipped", flush=True)
                continue
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
        from thinjax import report
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
        md = report.markdown(title, rows, lit, plots, self.failures, self.cfg.get("notes", ""))
        with open(os.path.join(self.workdir, "report.md"), "w") as f:
            f.write(md)
        if report_dir:
            os.makedirs(report_dir, exist_ok=True)
            for name in ["report.md", "results.csv", "literature.csv"] + \
                    [os.path.basename(p) for ps in plots.values() for p in ps]:
                src = os.path.join(self.workdir, name)
                if os.path.exists(src):
                    shutil.copy(src, os.path.join(report_dir, name))
        return {"rows": rows, "failures": self.failures, "report":
                os.path.join(self.workdir, "report.md")}


def main(argv: list[str]) -> dict | cli.Finished:
    """Runs the study's runs (skipping finished ones), writes the outputs, returns them
    (thinjax.cli prints them with --json); exit status 1 if a run failed."""
    if len(argv) > 1:
        raise cli.UsageError(f"unexpected argument {argv[1]!r} (config values go in "
                             "--config.KEY=VALUE)")
    cfg, workdir = _CONFIG.value, _WORKDIR.value
    os.makedirs(workdir, exist_ok=True)
    st = Study(cfg, workdir)
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
