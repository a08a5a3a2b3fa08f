# ``python -m thinjax.main --config=... --workdir=...``: training, the documented entry point,
# kept as an alias of `thinjax.commands.train` (where the command lives).
# (--help prints the command module's docstring, imported here as this one's).
from thinjax.commands.train import __doc__, cli_main  # noqa: F401

if __name__ == "__main__":
    cli_main()
