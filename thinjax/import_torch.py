"""Import a PyTorch ResNet checkpoint as a thinjax checkpoint (with its inferred plan).

    python -m thinjax.import_torch SRC DST [--overwrite] [--json]

SRC: .pt/.pth (needs PyTorch; loaded with weights_only=True), .safetensors or .npz, with
torchvision names (conv1, bn1, layerX.Y.*, fc) or the ThinResNet release's (embed.0,
embed.1, module. prefix). DST: a new directory, written atomically.
"""

from __future__ import annotations

import json
import os
import sys


def import_to(src: str, dst: str, overwrite: bool = False) -> dict:
    from thinjax.checkpoint import export_model
    from thinjax.cost import count
    from thinjax.interop.torch import import_checkpoint
    plan, variables = import_checkpoint(src)
    export_model(dst, plan, variables, {"source": os.path.abspath(src)}, overwrite=overwrite)
    c = count(plan)
    return {"source": src, "output": os.path.abspath(dst), "params": c.params, "macs": c.macs,
            "input_size": c.input_size, "plan": plan.to_dict()}


def main(argv=None) -> int:
    import argparse
    ap = argparse.ArgumentParser(prog="python -m thinjax.import_torch", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("src")
    ap.add_argument("dst")
    ap.add_argument("--overwrite", action="store_true", help="replace an existing DST")
    ap.add_argument("--json", action="store_true", help="print one JSON object last")
    a = ap.parse_args(argv)
    from thinjax.errors import user_errors
    from thinjax.plan import Plan
    with user_errors():
        r = import_to(a.src, a.dst, a.overwrite)
    print(f"wrote {r['output']}: {Plan.from_dict(r['plan']).describe()}")
    print(f"{r['params']:,} params, {r['macs'] / 1e6:.2f} M MACs at {r['input_size']}px")
    if a.json:
        print(json.dumps(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
