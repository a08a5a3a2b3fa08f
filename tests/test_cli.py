"""The command-line convention every command shares (thinjax.cli): absl flags spelt with
underscores, a console script each, --help, one 'error:' line and exit status 2 for bad
input, no library log lines. Three subprocesses of the cheapest command; the rest is read
from the sources."""

import ast
import os
import re
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMANDS = {"thinjax-train": "commands.train", "thinjax-evaluate": "commands.evaluate",
            "thinjax-cost": "commands.cost", "thinjax-convert": "commands.prune",
            "thinjax-prune": "commands.prune", "thinjax-import-torch": "commands.import_torch",
            "thinjax-study": "commands.study", "thinjax-export": "commands.export",
            "thinjax-zoo": "commands.zoo", "thinjax-plot": "commands.plot"}
# python -m thinjax.X, the spellings the docs use, as aliases of the command modules
ALIASES = {"main": "train", "evaluate": "evaluate", "cost.__main__": "cost",
           "convert": "prune", "import_torch": "import_torch", "study": "study",
           "export": "export", "zoo.__main__": "zoo", "plot": "plot"}
# an absl/glog log line (I0101 12:00:00.000 ...), Python logging's default format, orbax
LOG_LINE = re.compile(r"^([IWEF]\d{4} |(INFO|WARNING|ERROR):(absl|root|orbax|jax)|.*orbax)",
                      re.M)


def command(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "thinjax.cost", *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=120)


def source_of(module: str) -> str:
    """The source of thinjax.<module> (dotted: commands.train; a package: its __init__)."""
    path = os.path.join(ROOT, "thinjax", *module.split("."))
    return open(path + ".py" if os.path.exists(path + ".py") else
                os.path.join(path, "__init__.py")).read()


def flag_names(module: str) -> list[str]:
    """The names given to absl DEFINE_* calls in thinjax/<module>.py."""
    tree = ast.parse(source_of(module))
    return [n.args[0].value for n in ast.walk(tree)
            if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
            and n.func.attr.startswith("DEFINE_") and n.args
            and isinstance(n.args[0], ast.Constant)]


def test_console_scripts_and_flag_spellings():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        scripts = tomllib.load(f)["project"]["scripts"]
    assert scripts == {name: f"thinjax.{mod}:cli_main" for name, mod in COMMANDS.items()}
    for mod in COMMANDS.values():
        source = source_of(mod)
        assert "def cli_main() -> None:" in source and "argparse" not in source, mod
        assert 'if __name__ == "__main__":\n    cli_main()' in source, mod
        names = flag_names(mod)
        assert names or "define_json" in source, mod
        assert all(re.fullmatch(r"[a-z][a-z0-9_]*", n) for n in names), (mod, names)
        assert "define_json" in source, mod  # every command takes --json


def test_the_old_module_spellings_are_aliases_of_the_commands():
    for alias, mod in ALIASES.items():
        source = source_of(alias)
        assert f"from thinjax.commands.{mod} import __doc__, cli_main" in source, alias
        assert 'if __name__ == "__main__":\n    cli_main()' in source, alias
        assert len(source.splitlines()) < 10, alias


def test_help_is_quick_and_lists_the_flags():
    t = time.perf_counter()
    r = command("--help")
    assert r.returncode == 0, r.stderr
    assert time.perf_counter() - t < 30
    assert "Parameters and multiply-accumulates" in r.stdout  # the module docstring
    for flag in ("--model", "--width", "--input_size", "--base_width", "--[no]json"):
        assert flag in r.stdout, flag


def test_bad_input_is_one_error_line_and_exit_2():
    r = command("--model=resnet20", "--width=0")
    assert r.returncode == 2
    assert [ln for ln in r.stderr.splitlines() if ln.strip()] == \
        ["error: width must be >= 1, got 0"]
    assert "Traceback" not in r.stderr and r.stdout == ""


@pytest.mark.parametrize("args", [("--model=resnet20", "--width=4")])
def test_no_library_log_lines(args):
    r = command(*args)
    assert r.returncode == 0, r.stderr
    assert "17,534 params" in r.stdout
    assert not LOG_LINE.search(r.stdout + r.stderr), r.stdout + r.stderr


def library_modules() -> list[str]:
    """Every thinjax module that is not a command (dotted, relative to thinjax)."""
    mods = []
    for d, _, files in os.walk(os.path.join(ROOT, "thinjax")):
        rel = os.path.relpath(d, os.path.join(ROOT, "thinjax"))
        for f in files:
            if f.endswith(".py"):
                parts = ([] if rel == "." else rel.split(os.sep)) + [f[:-3]]
                mods.append(".".join(parts).removesuffix(".__init__"))
    return sorted(m for m in mods if m != "commands" and not m.startswith("commands.")
                  and m not in ALIASES)


def imported(module: str) -> set[str]:
    """The thinjax modules that thinjax.<module> imports (any level of its source)."""
    tree = ast.parse(source_of(module))
    out = set()
    for n in ast.walk(tree):
        if isinstance(n, ast.Import):
            out |= {a.name for a in n.names}
        elif isinstance(n, ast.ImportFrom) and n.module:
            out |= {n.module} | {f"{n.module}.{a.name}" for a in n.names}
    return {m.removeprefix("thinjax.") for m in out if m.startswith("thinjax.")}


def test_the_library_imports_no_command_and_errors_is_a_leaf():
    bad = {m: sorted(x for x in imported(m) if x == "commands" or x.startswith("commands."))
           for m in library_modules()}
    bad = {m: v for m, v in bad.items() if v}
    assert not bad, f"library modules importing commands: {bad}"
    assert {"cost", "zoo", "train.loop", "checkpoint"} <= set(library_modules())
    code = ("import sys, thinjax.errors; a = sorted(m for m in sys.modules if "
            "m.startswith('thinjax')); import thinjax.prune.allocate, thinjax.zoo; "
            "print(a, 'thinjax.commands' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["['thinjax',", "'thinjax.errors']", "False"]


def test_no_test_file_imports_another():
    """Shared test code lives in tests/helpers.py (and conftest.py), not in test files."""
    bad = {}
    for f in sorted(os.listdir(os.path.join(ROOT, "tests"))):
        if f.startswith("test_") and f.endswith(".py"):
            tree = ast.parse(open(os.path.join(ROOT, "tests", f)).read())
            mods = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)} | {
                a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
            hits = sorted(m for m in mods if m and m.startswith("tests.test_"))
            if hits:
                bad[f] = hits
    assert not bad, bad
