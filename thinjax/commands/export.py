"""Export a network (pruned or not) to ONNX, PyTorch or TFLite, checked in that format's
own runtime.

    python -m thinjax.export --checkpoint=SRC --format=onnx|torch|tflite --output=DST
        [--batch_size=N] [--input_size=S] [--overwrite] [--json]
    thinjax-export ...                        (the same, as a console script)

SRC: anything ``thinjax.evaluate`` takes: a thinjax checkpoint or workdir, a
``thinjax.convert`` output (its smaller network), a PyTorch/safetensors/npz file, or a
released network by name (``zoo:resnet56_w16_cifar10``).

  onnx    DST.onnx: inference graph (BatchNorm folded into the convolutions), input
          ``images`` NCHW float32, output ``logits``; checked in onnxruntime
  torch   DST.pt: state dict in the release's key names, plus DST.plan.json; load with
          thinjax.interop.torch_module.load_exported(DST.pt); checked in PyTorch
  tflite  DST.tflite: float32, input NHWC; checked with the TFLite interpreter

ONNX and TFLite files describe themselves (docs/export.md, "Metadata"): input layout and
size, mean/std, class names and the plan. Class names are those of --dataset (cifar10,
imagenet, an image folder), by default of the data the checkpoint was trained on where it
records it (a training run's config, a zoo network), else none.

--batch_size fixes the batch dimension (default: any batch), --input_size the image size
(default 32 for CIFAR-stem plans, 224 for ImageNet-stem ones). The export is written only
once its logits on real CIFAR-10 images (the bundled sample) agree with thinjax's within
--tolerance (relative); an existing DST is refused without --overwrite. Needs the export
extra: pip install 'thinjax[export]'.
"""

from __future__ import annotations

from absl import flags

from thinjax import fs, zoo
from thinjax.commands import cli
from thinjax.commands.cli import UsageError
from thinjax.cost import check_input_size
from thinjax.interop.export import FORMATS, check_output, export
from thinjax.interop.metadata import class_names_for
from thinjax.load import load_model
from thinjax.plan import Plan

FLAGS = flags.FlagValues()  # this command's flags (thinjax.cli.run adds them when it runs)
_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "thinjax checkpoint/workdir, convert "
                                  "output, .pt file or zoo:NAME", flag_values=FLAGS,
                                  required=True)
_FORMAT = flags.DEFINE_enum("format", None, list(FORMATS), "the format to write",
                            flag_values=FLAGS, required=True)
_OUTPUT = flags.DEFINE_string("output", None, "the file to write", flag_values=FLAGS,
                              required=True)
_BATCH_SIZE = flags.DEFINE_integer("batch_size", None, "fix the batch dimension (default: "
                                   "any batch)", flag_values=FLAGS)
_INPUT_SIZE = flags.DEFINE_integer("input_size", None, "square input size (default: the "
                                   "plan's, 32 or 224)", flag_values=FLAGS)
_EMA = flags.DEFINE_bool("ema", True, "use a training run's EMA weights (--noema: its raw "
                         "weights)", flag_values=FLAGS)
_TOLERANCE = flags.DEFINE_float("tolerance", 1e-4, "largest relative logit difference "
                                "accepted", flag_values=FLAGS)
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "replace an existing --output",
                               flag_values=FLAGS)
_DATASET = flags.DEFINE_string("dataset", None, "the dataset whose class names the export "
                               "records: cifar10, imagenet or an image folder (default: the "
                               "checkpoint's own, where it records it)", flag_values=FLAGS)
_JSON = cli.define_json(FLAGS)


def trained_on(spec: str, meta: dict) -> str | None:
    """The dataset `spec` was trained on, where it says: a zoo network's, a training run's
    config's data.name, or that of the zoo network a convert output was pruned from."""
    for name in (spec, str(meta.get("source") or "")):
        if name.startswith("zoo:"):
            return zoo.entry(name.removeprefix("zoo:")).dataset
    cfg = meta.get("config")
    return (cfg.get("data") or {}).get("name") if isinstance(cfg, dict) else None


def class_names(spec: str, meta: dict, plan: Plan) -> list[str] | None:
    """The class names the export records (None: unknown); an explicit --dataset whose
    names are unknown is an error."""
    names = class_names_for(_DATASET.value or trained_on(spec, meta), plan.num_classes)
    if _DATASET.value and names is None:
        raise UsageError(f"--dataset={_DATASET.value}: no {plan.num_classes} class names known "
                         "for it; give cifar10, imagenet or an image folder with "
                         f"{plan.num_classes} class folders (or leave --dataset out)")
    return names


def main(argv: list[str]) -> dict:
    """``python -m thinjax.export``: load, export, check, report."""
    if len(argv) > 1:
        raise UsageError(f"unexpected argument {argv[1]!r}; give --checkpoint, --format and "
                         "--output")
    fmt, out, ck = _FORMAT.value, _OUTPUT.value, _CHECKPOINT.value
    check_output(fmt, out, _OVERWRITE.value, source=ck)  # before loading anything
    check_input_size(_INPUT_SIZE.value)
    plan, variables, meta = load_model(ck, use_ema=_EMA.value)
    names = class_names(ck, meta, plan)
    with fs.writing(out, "choose an --output you can write to"):
        s = export(plan, variables, fmt, out, batch_size=_BATCH_SIZE.value,
                   input_size=_INPUT_SIZE.value, overwrite=_OVERWRITE.value,
                   tolerance=_TOLERANCE.value, class_names=names)
    s["checkpoint"] = ck
    print(f"{ck} -> {' + '.join(s['files'])} ({fmt}, {s['bytes']:,} bytes, "
          f"{s['params']:,} params, {s['macs'] / 1e6:.2f} M MACs at {s['input_size']}px, "
          f"{s['layout']})")
    print(f"checked in its runtime on real images: max relative logit error "
          f"{s['max_relative_error']:.2e} (tolerance {_TOLERANCE.value:g})")
    return s


def cli_main() -> None:
    """The ``thinjax-export`` console script and ``python -m thinjax.export``."""
    cli.run(main, FLAGS)


if __name__ == "__main__":
    cli_main()
