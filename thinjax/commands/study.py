"""A study, as one command (what it runs and writes: `thinjax.studies`; a config with a
``protocol`` section: `thinjax.protocol`).

    python -m thinjax.study --config=configs/study_cifar10_r56.py --workdir=DIR \\
        [--report_dir=docs/study_cifar10_r56] [--config.data.name=...] [--json]
    thinjax-study ...                         (the same, as a console script)

Every run keeps its result in DIR/runs/<run id>/row.json: a rerun skips finished runs; a run
that fails is reported (DIR/runs/<id>/error.txt) and the others go on (exit status 1 at the
end). ``--from_csv=FILE`` rebuilds the outputs from a results.csv alone. ``--pack_to=COPY``
(a protocol study) writes the compact copy of DIR that another machine continues from with
``--workdir=COPY`` (rows, and the weights later runs read; `thinjax.protocol.portable`); it
runs nothing and may run beside the study.
"""

from __future__ import annotations

import os

from absl import flags
from ml_collections import config_flags

from thinjax.commands import cli
from thinjax.errors import ConfigError
from thinjax.protocol import pack_study, run_study
from thinjax.studies import Study
from thinjax.workdir import locked

_CONFIG = config_flags.DEFINE_config_file("config", None, "study config (configs/study_*.py)")
_WORKDIR = flags.DEFINE_string("workdir", None, "output directory; rerun to continue")
_REPORT_DIR = flags.DEFINE_string("report_dir", None, "also write the report and plots here")
_FROM_CSV = flags.DEFINE_string("from_csv", None, "rebuild the report from this results.csv "
                                 "(no runs; an older file gets its budget columns filled)")
_PACK_TO = flags.DEFINE_string("pack_to", None, "write the compact copy of --workdir that "
                                "another machine continues from (protocol studies; no runs)")
_JSON = cli.define_json()
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> dict | cli.Finished:
    """Runs the study's runs (skipping finished ones), writes the outputs, returns them
    (thinjax.cli prints them with --json); exit status 1 if a run failed."""
    if len(argv) > 1:
        raise cli.UsageError(f"unexpected argument {argv[1]!r} (config values go in "
                             "--config.KEY=VALUE)")
    cfg, workdir = _CONFIG.value, _WORKDIR.value
    if _PACK_TO.value:  # reads finished runs only: no lock, the study may be running
        return _pack(cfg, workdir, _PACK_TO.value)
    if os.path.lexists(workdir) and not os.path.isdir(workdir):
        raise ConfigError(f"--workdir={workdir} is a file, not a folder; choose a new --workdir")
    os.makedirs(workdir, exist_ok=True)
    with locked(workdir):  # one study process per workdir
        return _main(cfg, workdir)


def _pack(cfg, workdir: str, dst: str) -> dict:
    if not cfg.get("protocol"):
        raise ConfigError("--pack_to packs a protocol study (a config with a protocol "
                          "section); copy another study's --workdir as it is")
    info = pack_study(cfg, workdir, dst)
    print(f"packed {info['rows']} rows and the weights of {len(info['weights_kept'])} runs "
          f"({info['bytes'] / 2**20:.1f} MiB) into {dst}; continue with --workdir={dst} "
          "(or a copy of it)")
    return info


def _main(cfg, workdir: str) -> dict | cli.Finished:
    if cfg.get("protocol"):  # paired seeds, LR selection, one data domain (thinjax.protocol)
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
