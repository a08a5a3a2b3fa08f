# ``python -m thinjax.import_torch``: PyTorch weights in, kept as an alias of
# `thinjax.commands.import_torch` (where the command lives).
# (--help prints the command module's docstring, imported here as this one's).
from thinjax.commands.import_torch import __doc__, cli_main  # noqa: F401

if __name__ == "__main__":
    cli_main()
