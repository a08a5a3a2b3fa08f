"""A study's outputs: results.csv, literature.csv, the plots and report.md (also to
--report_dir), and rebuilding them from a results.csv."""

from __future__ import annotations

import csv
import os
import shutil

from thinjax import report
from thinjax.plots import plot as study_plot
from thinjax.studies.plan import plan_runs

LITERATURE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                          "assets", "literature.csv")


class Outputs:
    """The output half of `thinjax.studies.runner.Study` (its rows, config and workdir)."""

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
        title, label = self.cfg.title, self.eval_label()
        plots = {}
        if rows:
            for key, stem in (("macs", "acc_vs_macs"), ("params", "acc_vs_params")):
                plots[key] = study_plot(rows, lit, os.path.join(self.workdir, stem), key,
                                         title, label)
        notes = self.data_and_weights(rows) + "\n\n" + self.cfg.get("notes", "")
        md = report.markdown(title, rows, lit, plots, self.failures, notes.strip(),
                             self.cfg.get("domain", ""), self.not_run())
        with open(os.path.join(self.workdir, "report.md"), "w") as f:
            f.write(md)
        if report_dir:
            self.copy_outputs(report_dir, plots)
        return {"rows": rows, "failures": self.failures, "report":
                os.path.join(self.workdir, "report.md")}

    def ran_on(self) -> str:
        """The data the rows were measured on, as the study config's data says."""
        d = self.cfg.data
        return f"{os.path.basename(str(d.name).rstrip('/'))}, split {d.get('split', 'test')}"

    def label_holds(self) -> bool:
        """Whether the config's own words about its data (eval_label, notes) describe the
        data this study ran on: its ``eval_label_data`` (a data name's last part) is that of
        config.data.name (a config without one is taken at its word)."""
        want = self.cfg.get("eval_label_data")
        return not want or os.path.basename(str(self.cfg.data.name).rstrip("/")) == want

    def eval_label(self) -> str:
        if self.cfg.get("eval_label") and self.label_holds():
            return self.cfg.eval_label
        return self.ran_on()

    def data_and_weights(self, rows: list[dict]) -> str:
        """One generated sentence: the data the rows ran on and the weights each scored."""
        by: dict[str, list[str]] = {}
        for r in rows:
            by.setdefault(str(r.get("weights") or "?"), []).append(str(r.get("arm") or "?"))
        w = "; ".join(f"{k} weights for {len(v)} row(s) ({', '.join(sorted(set(v)))})"
                      for k, v in sorted(by.items()))
        s = f"Data: {self.ran_on()}. Scored on: {w or 'no rows yet'}."
        if not self.label_holds():
            s += (f" (The notes below were written for {self.cfg.eval_label_data}, not for "
                  "this data.)")
        return s

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
