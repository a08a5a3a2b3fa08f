# ``python -m thinjax.plot``: training curves, kept as an alias of `thinjax.commands.plot`
# (where the command lives).
# (--help prints the command module's docstring, imported here as this one's).
from thinjax.commands.plot import __doc__, cli_main  # noqa: F401

if __name__ == "__main__":
    cli_main()
