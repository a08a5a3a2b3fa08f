# ``python -m thinjax.convert``: pruning a checkpoint into a smaller one, kept as an alias of
# `thinjax.commands.prune` (where the command lives).
# (--help prints the command module's docstring, imported here as this one's).
from thinjax.commands.prune import __doc__, cli_main  # noqa: F401

if __name__ == "__main__":
    cli_main()
