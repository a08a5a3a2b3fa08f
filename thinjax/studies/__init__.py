"""Studies: a ThinResNet width sweep against pruned wide networks at equal cost, with
published results beside them (the library behind ``python -m thinjax.study``; a config
with a ``protocol`` section runs `thinjax.protocol` instead).

Modules: `plan` (which runs a config asks for: `plan_runs`, `budget_plan`, typed `StudyRun`
records), `runner` (`Study`: running them, one row per run, resumable), `outputs` (the
CSV, plots and report).

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

from thinjax.studies.plan import StudyRun, budget_plan, entry_spec, plan_runs
from thinjax.studies.runner import Study

__all__ = ["StudyRun", "Study", "budget_plan", "entry_spec", "plan_runs"]
