"""Checkpoint -> pruned checkpoint: masks become a genuinely smaller network.

    python -m thinjax.convert --checkpoint=SRC --output=DST [--data=DATASET] [--json]
    python -m thinjax.convert --checkpoint=model.pt --output=DST \\
        --criterion=l1 --allocation=global --target_kind=macs --target=31.5e6
    thinjax-convert ...                       (the same, as a console script)

SRC: a pruning run's workdir or checkpoint (its masks are used), or any unmasked thinjax
or PyTorch checkpoint, pruned here by ``--criterion`` and ``--target_kind/--target`` (also
applied on top of a run's masks). A checkpoint of an example network
(thinjax.models.examples, ``config.model.example``) is pruned on the channel groups its
trace finds (thinjax.trace); every flag means the same (``--allow_block_removal`` aside).
DST (new; ``--overwrite`` to replace) receives, written
atomically:
  model/        the smaller network (orbax; EMA weights of a training run unless --noema)
  plan.json     its channel plan
  config.py     the config that fine-tunes it:  python -m thinjax.main --config=DST/config.py
                --workdir=W  (add --config.mode=evaluate to evaluate it instead)
  summary.json  the before/after table below, as JSON
The table gives params, MACs, per-stage widths, and top-1 with ``--data``.
"""

from __future__ import annotations

from absl import flags

from thinjax.commands import cli
from thinjax.commands.cli import UsageError
from thinjax.conversion import convert
from thinjax.errors import ConfigError
from thinjax.prune import spec as prune_spec
from thinjax.prune.spec import PruneSpec

FLAGS = flags.FlagValues()  # this command's flags (thinjax.cli.run adds them when it runs)
_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "workdir, checkpoint, .pt file or "
                                  "zoo:NAME", flag_values=FLAGS, required=True)
_OUTPUT = flags.DEFINE_string("output", None, "new directory for the pruned network",
                              flag_values=FLAGS, required=True)
_CRITERION = flags.DEFINE_string("criterion", None, "l1 | l2 | bn_scale | taylor | random | "
                                 "... (default l1)", flag_values=FLAGS)
_TARGET_KIND = flags.DEFINE_string("target_kind", None, "ratio | params | macs | "
                                   "params_fraction | macs_fraction", flag_values=FLAGS)
_TARGET = flags.DEFINE_float("target", None, "the target, in --target_kind's units",
                             flag_values=FLAGS)
_ALLOCATION = flags.DEFINE_string("allocation", "global", "global | uniform | explicit",
                                  flag_values=FLAGS)
_GROUP_RATIO = flags.DEFINE_multi_string(
    "group_ratio", [], "REGEX=FRACTION (repeatable): explicit allocation, the fraction "
    "removed from matching groups", flag_values=FLAGS)
_REDUCE = flags.DEFINE_string("reduce", "mean", "group score reduction: mean | sum | max",
                              flag_values=FLAGS)
_NORMALIZATION = flags.DEFINE_string("normalization", "mean", "mean | max | sum | none",
                                     flag_values=FLAGS)
_ROUND_TO = flags.DEFINE_integer("round_to", 1, "keep channel counts multiples of this",
                                 flag_values=FLAGS)
_ALLOW_BLOCK_REMOVAL = flags.DEFINE_bool("allow_block_removal", False, "a residual block may "
                                         "lose its whole branch", flag_values=FLAGS)
_DATA = flags.DEFINE_string("data", None, "dataset to measure top-1 before/after",
                            flag_values=FLAGS)
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data directory", flag_values=FLAGS)
_SPLIT = flags.DEFINE_string("split", "test", "the split to evaluate", flag_values=FLAGS)
_TRAIN_SPLIT = flags.DEFINE_string("train_split", "train", "the split whose batches score "
                                   "data-dependent criteria and recalibrate BN",
                                   flag_values=FLAGS)
_SEED = flags.DEFINE_integer("seed", 0, "seed of the scoring batches' order and of random "
                             "criteria", flag_values=FLAGS)
_EVALUATE_BEFORE = flags.DEFINE_bool("evaluate_before", True, "with --data, evaluate the "
                                     "network before pruning too", flag_values=FLAGS)
_SCORE_MEMBERS = flags.DEFINE_string("score_members", "producers", "which tensors of a group "
                                     "a criterion scores: producers | all", flag_values=FLAGS)
_FPGM_P = flags.DEFINE_integer("fpgm_p", 0, "FPGM: 0 raw filters, p >= 1 |w|^p", flag_values=FLAGS)
_TAYLOR_BATCHES = flags.DEFINE_integer("taylor_batches", 8, "batches a Taylor criterion "
                                       "scores on", flag_values=FLAGS)
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 500, "evaluation batch size",
                                   flag_values=FLAGS)
_INPUT_SIZE = flags.DEFINE_integer("input_size", None, "square input size (default: the "
                                   "plan's, 32 or 224)", flag_values=FLAGS)
_RECALIBRATE_BN = flags.DEFINE_integer("recalibrate_bn", 0, "re-estimate BN statistics on "
                                       "this many training batches after pruning",
                                       flag_values=FLAGS)
_EMA = flags.DEFINE_bool("ema", True, "use a training run's EMA weights (--noema: its raw "
                         "weights)", flag_values=FLAGS)
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "replace an existing --output",
                               flag_values=FLAGS)
_JSON = cli.define_json(FLAGS)


def table(summary: dict) -> str:
    b, a = summary["before"], summary["after"]
    rows = [("", "before", "after", "after/before"),
            ("params", f"{b['params']:,}", f"{a['params']:,}", f"{a['params'] / b['params']:.3f}"),
            ("MACs", f"{b['macs'] / 1e6:.2f} M", f"{a['macs'] / 1e6:.2f} M",
             f"{a['macs'] / b['macs']:.3f}")]
    for sb, sa in zip(b["stages"], a["stages"]):
        name = sb.split()[0]
        rows.append((f"{name} width/inner", sb.split(" ", 1)[1], sa.split(" ", 1)[1], ""))
    if "groups" in a:  # an example network's traced groups
        cut = sum(1 for k, n in a["groups"].values() if k < n)
        rows.append(("channel groups cut", "", f"{cut} of {len(a['groups'])}", ""))
    if "top1_before_recalibration" in a:
        rows.append(("top-1 before BN recalibration", "", f"{a['top1_before_recalibration']:.2f}%",
                     ""))
    if "top1" in a and "top1" in b:
        rows.append(("top-1", f"{b['top1']:.2f}%", f"{a['top1']:.2f}%",
                     f"{a['top1'] - b['top1']:+.2f}"))
    w = [max(len(r[i]) for r in rows) for i in range(4)]
    return "\n".join("  ".join(c.ljust(w[i]) for i, c in enumerate(r)) for r in rows)


def _group_ratios(specs: list[str]) -> list[tuple[str, float]]:
    """``--group_ratio REGEX=FRACTION`` values as (regex, fraction) pairs."""
    ratios = []
    for gr in specs:
        k, sep, v = gr.rpartition("=")
        try:
            frac = float(v) if sep else None
        except ValueError:
            frac = None
        if frac is None:
            raise ConfigError(f"--group_ratio {gr!r}: expected REGEX=FRACTION")
        ratios.append((k, frac))
    return ratios


def spec_from_flags() -> PruneSpec | None:
    """The `PruneSpec` the flags describe; None without --target_kind/--target (the
    checkpoint's own masks are materialised then)."""
    if (_TARGET_KIND.value is None) != (_TARGET.value is None):
        raise ConfigError("give both --target_kind and --target (or neither, to materialise "
                          "the checkpoint's own masks)")
    if _TARGET_KIND.value is None:
        return None
    return prune_spec.from_config(dict(
        criterion=_CRITERION.value or "l1", target_kind=_TARGET_KIND.value,
        target=_TARGET.value, allocation=_ALLOCATION.value, reduce=_REDUCE.value,
        normalization=_NORMALIZATION.value, round_to=_ROUND_TO.value,
        allow_block_removal=_ALLOW_BLOCK_REMOVAL.value, score_members=_SCORE_MEMBERS.value,
        fpgm_p=_FPGM_P.value, taylor_batches=_TAYLOR_BATCHES.value,
        group_ratios=_group_ratios(_GROUP_RATIO.value)), where="--")


def main(argv: list[str]) -> dict:
    """``python -m thinjax.convert``: prune (or materialise), write, report."""
    if len(argv) > 1:
        raise UsageError(f"unexpected argument {argv[1]!r}; give --checkpoint and --output")
    s = convert(_CHECKPOINT.value, _OUTPUT.value, spec=spec_from_flags(), data=_DATA.value,
                data_dir=_DATA_DIR.value, split=_SPLIT.value, batch_size=_BATCH_SIZE.value,
                train_split=_TRAIN_SPLIT.value, input_size=_INPUT_SIZE.value,
                use_ema=_EMA.value, overwrite=_OVERWRITE.value,
                recalibrate_bn=_RECALIBRATE_BN.value, evaluate_before=_EVALUATE_BEFORE.value,
                seed=_SEED.value)
    print(f"pruned {s['source']} ({s['pruning']}) -> {s['output']}")
    print(table(s))
    print(f"fine-tune: python -m thinjax.main --config={s['output']}/config.py --workdir=DIR")
    return s


def cli_main() -> None:
    """The ``thinjax-convert`` console script and ``python -m thinjax.convert``."""
    cli.run(main, FLAGS)


if __name__ == "__main__":
    cli_main()
