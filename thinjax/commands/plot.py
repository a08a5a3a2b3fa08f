"""Plot training runs: loss, evaluation top-1 and learning rate against steps, from each
run's metrics.jsonl.

    python -m thinjax.plot RUN [RUN ...] --out=PATH [--title=TEXT] [--x=step|epoch]
        [--table] [--json]
    thinjax-plot ...                          (the same, as a console script)

RUN: a training workdir (the --workdir of thinjax-train, local or gs://) or a metrics.jsonl
file. Writes PATH.png and PATH.svg (a .png or .svg ending of --out is dropped), a colour
per run and the legend by run name (the folder's name, with its parents where two runs
share one). --table also prints each run's evaluations as a Markdown table.
"""

from __future__ import annotations

from absl import flags

from thinjax import curves, fs
from thinjax.commands import cli
from thinjax.commands.cli import UsageError

FLAGS = flags.FlagValues()  # this command's flags (thinjax.cli.run adds them when it runs)
_OUT = flags.DEFINE_string("out", None, "output prefix: writes OUT.png and OUT.svg",
                           flag_values=FLAGS, required=True)
_TITLE = flags.DEFINE_string("title", None, "figure title (default: the run names)",
                             flag_values=FLAGS)
_X = flags.DEFINE_enum("x", "step", list(curves.X_KEYS), "the horizontal axis", flag_values=FLAGS)
_TABLE = flags.DEFINE_bool("table", False, "print each run's evaluations as a Markdown table",
                           flag_values=FLAGS)
_JSON = cli.define_json(FLAGS)


def main(argv: list[str]) -> dict:
    """``python -m thinjax.plot RUN...``: read every run, draw, report the files."""
    dirs = argv[1:]
    if not dirs:
        raise UsageError("give one or more training workdirs (or metrics.jsonl files) to "
                         "plot, e.g. thinjax-plot runs/quick --out=quick")
    runs = {name: curves.read_metrics(d) for name, d in zip(curves.run_names(dirs), dirs)}
    with fs.writing(_OUT.value, "choose an --out you can write to"):
        files = curves.plot_curves(runs, curves.output_stem(_OUT.value), _TITLE.value,
                                   _X.value)
    for name, rows in runs.items():
        if _TABLE.value:
            print(f"\n{name}\n\n{curves.eval_table(rows)}\n")
    print(f"{len(runs)} run(s) -> {' + '.join(files)}")
    return {"files": files, "runs": {name: {"run": d, **curves.summary(rows)}
                                     for (name, rows), d in zip(runs.items(), dirs)}}


def cli_main() -> None:
    """The ``thinjax-plot`` console script and ``python -m thinjax.plot``."""
    cli.run(main, FLAGS)


if __name__ == "__main__":
    cli_main()
