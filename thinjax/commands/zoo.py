"""The model zoo's command: list the release, or get (find or download, then check) one file.

    python -m thinjax.zoo list [--dataset=cifar10] [--arch=resnet56] [--json]
    python -m thinjax.zoo get resnet56_w12_cifar10 [--json]
    thinjax-zoo list ...                      (the same, as a console script)
"""

from __future__ import annotations

import os
from collections.abc import Iterator

from absl import flags

from thinjax.commands import cli
from thinjax.commands.cli import UsageError
from thinjax.zoo import entry, fetch, format_table, manifest, rows

FLAGS = flags.FlagValues()  # this command's flags (thinjax.cli.run adds them when it runs)
_DATASET = flags.DEFINE_string("dataset", None, "list: only this dataset (cifar10, "
                               "cifar100, imagenet)", flag_values=FLAGS)
_ARCH = flags.DEFINE_string("arch", None, "list: only this architecture (resnet20, ...)",
                            flag_values=FLAGS)
_JSON = cli.define_json(FLAGS)


def _datasets_help() -> Iterator[str]:
    """'dataset: archs' lines for the list command's help."""
    yield from (f"{d}: {', '.join(sorted({e.arch for e in manifest() if e.dataset == d}))}"
                for d in sorted({e.dataset for e in manifest()}))


def main(argv: list[str]) -> dict:
    """``python -m thinjax.zoo list|get NAME``: the subcommand is the first positional."""
    command, args = (argv[1], argv[2:]) if len(argv) > 1 else (None, [])
    if command == "list" and not args:
        table = rows(_DATASET.value, _ARCH.value)
        print(format_table(table))
        return {"networks": table}
    if command == "get" and len(args) == 1:
        e = entry(args[0])
        path = fetch(e)  # a bar on a terminal, plain lines elsewhere (thinjax.progress)
        print(path)
        return {"name": e.name, "path": path, "bytes": os.path.getsize(path),
                "release_path": e.path}
    raise UsageError(f"expected 'list' or 'get NAME', got {' '.join(argv[1:])!r}; "
                     f"the release has {'; '.join(_datasets_help())}")


def cli_main() -> None:
    """The ``thinjax-zoo`` console script and ``python -m thinjax.zoo``."""
    cli.run(main, FLAGS)


if __name__ == "__main__":
    cli_main()
