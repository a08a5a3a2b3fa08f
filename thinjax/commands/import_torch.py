"""Import a PyTorch ResNet checkpoint as a thinjax checkpoint (with its inferred plan).

    python -m thinjax.import_torch --checkpoint=SRC --output=DST [--overwrite] [--json]
    thinjax-import-torch ...                  (the same, as a console script)

SRC: .pt/.pth (needs PyTorch; loaded with weights_only=True), .safetensors or .npz, with
torchvision names (conv1, bn1, layerX.Y.*, fc) or the ThinResNet release's (embed.0,
embed.1, module. prefix). DST: a new directory, written atomically (a thinjax checkpoint).
--overwrite replaces DST only if thinjax wrote it (its ``.thinjax-output`` marker or a
checkpoint's layout), never a folder of other files, and never SRC itself.
"""

from __future__ import annotations

import os

from absl import flags

from thinjax import fs
from thinjax.checkpoint import check_finite, export_model
from thinjax.commands import cli
from thinjax.commands.cli import UsageError
from thinjax.cost import count
from thinjax.interop.torch import import_checkpoint
from thinjax.plan import Plan

FLAGS = flags.FlagValues()  # this command's flags (thinjax.cli.run adds them when it runs)
_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "SRC: .pt/.pth, .safetensors or .npz",
                                  flag_values=FLAGS, required=True)
_OUTPUT = flags.DEFINE_string("output", None, "DST: a new checkpoint directory",
                              flag_values=FLAGS, required=True)
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "replace an existing --output",
                               flag_values=FLAGS)
_JSON = cli.define_json(FLAGS)


def import_to(src: str, dst: str, overwrite: bool = False) -> dict:
    """Imports `src` into the new directory `dst` (with `overwrite`, an earlier thinjax
    output there is replaced; anything else is refused, as is `dst` = `src`)."""
    fs.check_replaceable(dst, [src], overwrite)  # before the (slow) import
    plan, variables = import_checkpoint(src)
    check_finite(variables, where=src)
    export_model(dst, plan, variables, {"source": os.path.abspath(src)}, overwrite=overwrite,
                 sources=(src,))
    c = count(plan)
    return {"source": src, "output": os.path.abspath(dst), "params": c.params, "macs": c.macs,
            "input_size": c.input_size, "plan": plan.to_dict()}


def main(argv: list[str]) -> dict:
    """``python -m thinjax.import_torch``: import, write, report."""
    if len(argv) > 1:
        raise UsageError(f"unexpected argument {argv[1]!r}; give --checkpoint=SRC and "
                         "--output=DST")
    r = import_to(_CHECKPOINT.value, _OUTPUT.value, _OVERWRITE.value)
    print(f"wrote {r['output']}: {Plan.from_dict(r['plan']).describe()}")
    print(f"{r['params']:,} params, {r['macs'] / 1e6:.2f} M MACs at {r['input_size']}px")
    return r


def cli_main() -> None:
    """The ``thinjax-import-torch`` console script and ``python -m thinjax.import_torch``."""
    cli.run(main, FLAGS)


if __name__ == "__main__":
    cli_main()
