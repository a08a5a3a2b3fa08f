"""Export a network (pruned or not) to ONNX, PyTorch or TFLite, checked in that format's
own runtime.

    python -m thinjax.export --checkpoint=SRC --format=onnx|torch|tflite --output=DST
        [--batch-size N] [--input-size S] [--overwrite] [--json]

SRC: anything ``thinjax.evaluate`` takes: a thinjax checkpoint or workdir, a
``thinjax.convert`` output (its smaller network), a PyTorch/safetensors/npz file, or a
released network by name (``zoo:resnet56_w16_cifar10``).

  onnx    DST.onnx: inference graph (BatchNorm folded into the convolutions), input
          ``images`` NCHW float32, output ``logits``; checked in onnxruntime
  torch   DST.pt: state dict in the release's key names, plus DST.plan.json; load with
          thinjax.interop.torch_module.load_exported(DST.pt); checked in PyTorch
  tflite  DST.tflite: float32, input NHWC; checked with the TFLite interpreter

--batch-size fixes the batch dimension (default: any batch), --input-size the image size
(default 32 for CIFAR-stem plans, 224 for ImageNet-stem ones). The export is written only
once its logits on real CIFAR-10 images (the bundled sample) agree with thinjax's within
--tolerance (relative); an existing DST is refused without --overwrite. Needs the export
extra: pip install 'thinjax[export]'.
"""

from __future__ import annotations

import json
import sys

from thinjax.checkpoint import load_model
from thinjax.errors import user_errors
from thinjax.interop.export import FORMATS, check_output, export


def main(argv: list[str] | None = None) -> int:
    """``python -m thinjax.export``: parse, load, export, report."""
    import argparse
    ap = argparse.ArgumentParser(prog="python -m thinjax.export", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True,
                    help="thinjax checkpoint/workdir, convert output, .pt file or zoo:NAME")
    ap.add_argument("--format", required=True, choices=FORMATS)
    ap.add_argument("--output", required=True, help="the file to write")
    ap.add_argument("--batch-size", type=int, default=None,
                    help="fix the batch dimension (default: any batch)")
    ap.add_argument("--input-size", type=int, default=None)
    ap.add_argument("--raw", action="store_true", help="raw weights, not a run's EMA")
    ap.add_argument("--tolerance", type=float, default=1e-4,
                    help="largest relative logit difference accepted (default 1e-4)")
    ap.add_argument("--overwrite", action="store_true")
    ap.add_argument("--json", action="store_true", help="print one JSON object last")
    a = ap.parse_args(argv)
    with user_errors():
        check_output(a.format, a.output, a.overwrite)  # before loading anything
        plan, variables, _ = load_model(a.checkpoint, use_ema=not a.raw)
        s = export(plan, variables, a.format, a.output, batch_size=a.batch_size,
                   input_size=a.input_size, overwrite=a.overwrite, tolerance=a.tolerance)
    s["checkpoint"] = a.checkpoint
    print(f"{a.checkpoint} -> {' + '.join(s['files'])} ({a.format}, {s['bytes']:,} bytes, "
          f"{s['params']:,} params, {s['macs'] / 1e6:.2f} M MACs at {s['input_size']}px, "
          f"{s['layout']})")
    print(f"checked in its runtime on real images: max relative logit error "
          f"{s['max_relative_error']:.2e} (tolerance {a.tolerance:g})")
    if a.json:
        print(json.dumps(s))
    return 0


if __name__ == "__main__":
    sys.exit(main())
