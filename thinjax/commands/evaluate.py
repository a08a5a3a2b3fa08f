"""Evaluate a checkpoint on a dataset: top-1, top-5 and loss, every example counted once.

    python -m thinjax.evaluate --checkpoint=PATH --data=DATASET [--split=test] [--json]
    thinjax-evaluate ...                      (the same, as a console script)

``--checkpoint`` may be repeated: the checkpoints are evaluated one after another in one
process (one start-up), and the ``--json`` result is then ``{"results": [one result per
checkpoint, in order]}``.

PATH: a thinjax checkpoint directory (or a training workdir), or a PyTorch .pt/.pth,
.safetensors or .npz state dict. DATASET: an image folder (split/label/*.jpg), a TFDS
name (cifar10, imagenet2012, ...) or ``sample:cifar10`` (bundled, offline).
Preprocessing follows the study's release: decode, scale to [0, 1], normalise with the
ImageNet mean/std; 32x32 images are not resized, ImageNet-stem models resize the shorter
side to 232 and centre-crop 224 unless --resize/--input_size say otherwise. A checkpoint
whose weights hold NaN or infinity is refused (exit 2), never reported as a 10% network.

The first evaluation of an image folder's split (or the sample's) keeps its preprocessed
inputs in the thinjax cache (``eval-inputs/``, `thinjax.split_cache`); a later one reads
them back without loading TensorFlow, with the same results. ``THINJAX_NO_EVAL_CACHE=1``
turns this off; splits over ``THINJAX_EVAL_CACHE_MAX_MB`` (1024) are not kept.
"""

from __future__ import annotations

from absl import flags

from thinjax.commands import cli, import_tensorflow
from thinjax.commands.cli import UsageError
from thinjax.cost import check_input_size
from thinjax.evaluation import evaluate_checkpoint

FLAGS = flags.FlagValues()  # this command's flags (thinjax.cli.run adds them when it runs)
_CHECKPOINT = flags.DEFINE_multi_string("checkpoint", None, "thinjax checkpoint or workdir, "
                                        ".pt/.pth/.safetensors/.npz file, or zoo:NAME "
                                        "(repeatable)", flag_values=FLAGS, required=True)
_DATA = flags.DEFINE_string("data", None, "image folder, TFDS name or sample:cifar10",
                            flag_values=FLAGS, required=True)
_SPLIT = flags.DEFINE_string("split", "test", "the split to evaluate", flag_values=FLAGS)
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data directory", flag_values=FLAGS)
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 500, "evaluation batch size",
                                   flag_values=FLAGS)
_INPUT_SIZE = flags.DEFINE_integer("input_size", None, "square input size (default: the "
                                   "plan's, 32 or 224)", flag_values=FLAGS)
_RESIZE = flags.DEFINE_integer("resize", None, "resize the shorter side to this before the "
                               "centre crop (default 232 for ImageNet-stem models)",
                               flag_values=FLAGS)
_EMA = flags.DEFINE_bool("ema", False, "use the EMA weights of a training run",
                         flag_values=FLAGS)
_JSON = cli.define_json(FLAGS)


def main(argv: list[str]) -> dict:
    """``python -m thinjax.evaluate``: load, evaluate, report (each checkpoint)."""
    if len(argv) > 1:
        raise UsageError(f"unexpected argument {argv[1]!r}; give --checkpoint and --data")
    check_input_size(_INPUT_SIZE.value)
    results = []
    for checkpoint in _CHECKPOINT.value:
        # TensorFlow (without Keras) only when the split's images are read: not when its
        # inputs are in the evaluation-input cache (thinjax.split_cache)
        r = evaluate_checkpoint(checkpoint, _DATA.value, _SPLIT.value, _BATCH_SIZE.value,
                                _DATA_DIR.value, _INPUT_SIZE.value, _RESIZE.value, _EMA.value,
                                load_tensorflow=import_tensorflow)
        print(f"{r['checkpoint']} on {r['data']}:{r['split']}: top-1 {r['top1']:.2f}%  "
              f"top-5 {r['top5']:.2f}%  loss {r['loss']:.4f}  ({r['count']} images, "
              f"{r['images_per_s']:.0f} img/s; {r['params']:,} params, "
              f"{r['macs'] / 1e6:.2f} M MACs)")
        results.append(r)
    return results[0] if len(results) == 1 else {"results": results}


def cli_main() -> None:
    """The ``thinjax-evaluate`` console script and ``python -m thinjax.evaluate``."""
    cli.run(main, FLAGS)


if __name__ == "__main__":
    cli_main()
