# ``python -m thinjax.cost``: parameters and MACs, kept as an alias of `thinjax.commands.cost`
# (where the command lives).
# (--help prints the command module's docstring, imported here as this one's).
from thinjax.commands.cost import __doc__, cli_main  # noqa: F401

if __name__ == "__main__":
    cli_main()
