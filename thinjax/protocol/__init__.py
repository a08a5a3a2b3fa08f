"""The study protocol: thin against pruned at equal cost, decided by paired seeds.

    python -m thinjax.study --config=configs/study_cifar10_r20_protocol.py --workdir=DIR \\
        --config.data.name=DATA [--report_dir=docs/...] [--from_csv=results.csv]

A study config with a ``protocol`` section (`spec.Protocol`) runs in one data domain: for
each seed, a dense network trained T epochs on the training part of the data, pruned
one-shot by each criterion to each target's MACs (BN recalibrated), then fine-tuned E
epochs; against the uniform ThinResNet of the target's width trained from scratch for
T + E epochs with the same seed (the same batches). Controls: the dense network fine-tuned
E epochs, gradual pruning during E, and Liu et al.'s scratch-E / scratch-B. Each arm's LR
is chosen on a held-out validation split (`plan`); every comparison is a paired
t-interval with a Holm-corrected verdict against a margin fixed in the config (`stats`,
`analysis`); `report` writes results.csv, the plots and report.md.

Modules: `spec` (settings, one run), `plan` (which runs, decided from finished rows),
`execute` (one run), `runner` (the loop, resumable), `analysis` (comparisons from rows),
`report` (tables, plots, markdown), `portable` (a compact copy another machine continues).
"""

from __future__ import annotations

import os
import shutil

from thinjax.protocol import analysis, portable, report
from thinjax.protocol import plan as planning
from thinjax.protocol.execute import Context
from thinjax.protocol.runner import code_commit, run_all
from thinjax.protocol.spec import Protocol, RunSpec, from_config

__all__ = ["Protocol", "RunSpec", "from_config", "pack_study", "run_study", "write_outputs"]


def _text(cfg, failures: list[str], left: list[str]) -> dict:
    limits = list(cfg.get("limits", ()))
    if failures:
        limits.append(f"{len(failures)} run(s) failed: " + "; ".join(failures))
    if left:
        limits.append(f"{len(left)} planned run(s) not reached yet (rerun the command to "
                      f"continue): {', '.join(left[:12])}{' ...' if len(left) > 12 else ''}")
    return {"title": cfg.title, "data": cfg.get("data_text", ""), "cpu": cfg.get("cpu", ""),
            "limits": limits, "rerun": cfg.get("rerun_text", "")}


def write_outputs(cfg, p: Protocol, rows: list[dict], workdir: str, report_dir: str | None,
                  failures=(), left=()) -> dict:
    """results.csv, forest.{png,svg}, e_curve.{png,svg}, literature.{png,svg}, report.md."""
    os.makedirs(workdir, exist_ok=True)
    analysis.write_csv(os.path.join(workdir, "results.csv"), rows)
    comps = analysis.comparisons(rows, p.delta)
    plots = {}
    if comps:
        stem = lambda n: os.path.join(workdir, n)  # noqa: E731
        plots["forest"] = report.forest_plot(comps, p.delta, stem("forest"), cfg.title)
        if len(p.finetune_epochs) > 1:
            plots["curve"] = report.e_curve_plot(comps, p.delta, stem("e_curve"), cfg.title)
        lit_file = cfg.get("literature_file")
        if lit_file:
            lit = report.read_literature(lit_file)
            pts = report.lit_points(comps, rows, p)
            if lit and pts:
                plots["literature"] = report.literature_plot(pts, lit, stem("literature"),
                                                             cfg.title)
    md = report.markdown(p, rows, comps, plots, _text(cfg, list(failures), list(left)))
    with open(os.path.join(workdir, "report.md"), "w") as f:
        f.write(md)
    if report_dir:
        os.makedirs(report_dir, exist_ok=True)
        for name in ["report.md", "results.csv"] + [os.path.basename(x) for v in plots.values()
                                                    for x in v]:
            shutil.copy(os.path.join(workdir, name), os.path.join(report_dir, name))
    return {"rows": rows, "comparisons": comps, "failures": list(failures),
            "report": os.path.join(workdir, "report.md")}


def _context(cfg, workdir: str) -> Context:
    d = cfg.data
    return Context(os.path.abspath(workdir), d.name, d.get("data_dir") or None,
                   int(d.eval_batch_size), code_commit())


def pack_study(cfg, workdir: str, dst: str) -> dict:
    """Writes `dst`: the compact copy of a study's workdir that a run elsewhere continues
    from (`portable`); runs nothing."""
    return portable.pack_workdir(_context(cfg, workdir), from_config(cfg.protocol), dst)


def run_study(cfg, workdir: str, report_dir: str | None = None, from_csv: str | None = None,
              log=print) -> dict:
    """Runs (or, with `from_csv`, only reports) the protocol of a study config."""
    p = from_config(cfg.protocol)
    workdir = os.path.abspath(workdir)
    if from_csv:
        return write_outputs(cfg, p, analysis.read_csv(from_csv), workdir, report_dir)
    rows, failures = run_all(_context(cfg, workdir), p, log)
    left = [r.id for r in planning.next_runs(p, rows, set())]
    return write_outputs(cfg, p, list(rows.values()), workdir, report_dir, failures, left)
