"""thinjax's layers go one way: no import cycle between its subpackages and top-level
modules, read from the sources (every static import, function-level ones included).

A node is a top-level module or subpackage: ``thinjax/X.py`` and ``thinjax/X/`` are both
node ``X``. The command modules sit on top and may import anything, so they are no
source of edges."""

import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PKG = os.path.join(ROOT, "thinjax")
# the command modules: thinjax/commands/ as a whole, and the aliases that keep the old
# ``python -m thinjax.X`` spellings (paths relative to thinjax/)
COMMANDS = {"main.py", "evaluate.py", "convert.py", "export.py", "import_torch.py",
            "study.py", "zoo/__main__.py", "cost/__main__.py", "plot.py"}
# edges (importer, imported) left in a cycle on purpose, each with its reason: none
KNOWN_CYCLE_EDGES: set[tuple[str, str]] = set()


def _module_name(rel: str) -> str:
    """thinjax/a/b.py -> thinjax.a.b; thinjax/a/__init__.py -> thinjax.a."""
    parts = ["thinjax"] + rel[:-3].split("/")
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _targets(node: ast.AST, module: str, is_package: bool) -> list[str]:
    """The dotted names an import statement names (`from a import b`: a and a.b)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if not isinstance(node, ast.ImportFrom):
        return []
    base = node.module or ""
    if node.level:  # relative: from the importing module's package upwards
        pkg = module.split(".") if is_package else module.split(".")[:-1]
        pkg = pkg[:len(pkg) - (node.level - 1)]
        base = ".".join(pkg + ([node.module] if node.module else []))
    return [base] + [f"{base}.{a.name}" for a in node.names]


def _node(dotted: str) -> str | None:
    """thinjax.X[.anything] -> X; anything else -> None."""
    parts = dotted.split(".")
    return parts[1] if parts[0] == "thinjax" and len(parts) > 1 else None


def import_edges() -> dict[tuple[str, str], list[str]]:
    """(importer node, imported node) -> the 'file:line' of each import making the edge."""
    edges: dict[tuple[str, str], list[str]] = {}
    for dirpath, dirnames, filenames in os.walk(PKG):
        dirnames[:] = sorted(d for d in dirnames if d not in ("__pycache__", "commands"))
        for f in sorted(filenames):
            rel = os.path.relpath(os.path.join(dirpath, f), PKG).replace(os.sep, "/")
            if not f.endswith(".py") or rel in COMMANDS or rel == "__init__.py":
                continue
            src = rel.split("/")[0].removesuffix(".py")
            module = _module_name(rel)
            tree = ast.parse(open(os.path.join(PKG, rel)).read(), rel)
            for n in ast.walk(tree):
                for t in _targets(n, module, f == "__init__.py"):
                    dst = _node(t)
                    where = f"thinjax/{rel}:{n.lineno}"
                    if dst and dst != src and where not in edges.get((src, dst), ()):
                        edges.setdefault((src, dst), []).append(where)
    return edges


def _reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in graph.get(todo.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def cycle_edges(edges) -> dict[tuple[str, str], list[str]]:
    """The edges that lie on a cycle (a -> b with a reachable from b)."""
    graph: dict[str, set[str]] = {}
    for a, b in edges:
        graph.setdefault(a, set()).add(b)
    return {(a, b): where for (a, b), where in edges.items() if a in _reachable(graph, b)}


def test_the_scan_sees_imports_at_every_level():
    edges = import_edges()
    assert ("train", "optim") in edges and ("checkpoint", "plan") in edges
    assert ("checkpoint", "models") in edges
    # a function-level import (evaluation.evaluate_on loads thinjax.data, TensorFlow, there)
    assert ("evaluation", "data") in edges
    assert not any(a in ("main", "cli", "commands", "study") for a, _ in edges)


def test_no_import_cycle_between_layers():
    found = cycle_edges(import_edges())
    unexpected = {e: w for e, w in found.items() if e not in KNOWN_CYCLE_EDGES}
    assert not unexpected, "import cycles between thinjax's layers (importer -> imported: " \
        f"where): {unexpected}"
    assert not KNOWN_CYCLE_EDGES - set(found), "a known cycle is gone: drop it from the list"


def test_checkpoint_knows_no_zoo_and_evaluation_no_training():
    edges = import_edges()
    assert ("checkpoint", "zoo") not in edges, edges.get(("checkpoint", "zoo"))
    assert ("evaluation", "train") not in edges, edges.get(("evaluation", "train"))


def test_one_definition_of_the_input_statistics():
    """The ImageNet mean/std live in thinjax/pixels.py alone (no TensorFlow needed to get
    them: the export checks use them too)."""
    written = []
    for dirpath, _, filenames in os.walk(PKG):
        for f in filenames:
            if f.endswith(".py"):
                text = open(os.path.join(dirpath, f)).read()
                if "0.485" in text or "0.229" in text:
                    written.append(os.path.relpath(os.path.join(dirpath, f), ROOT))
    assert sorted(written) == [os.path.join("thinjax", "pixels.py")]
    edges = import_edges()
    assert ("data", "pixels") in edges and ("interop", "pixels") in edges
    assert ("interop", "data") not in edges  # thinjax.data loads TensorFlow


def test_modules_and_functions_read_in_one_screen():
    """No thinjax module over 400 lines, no function over 60 (the config schema aside)."""
    long_modules, long_functions = [], []
    for dirpath, dirnames, filenames in os.walk(PKG):
        dirnames[:] = [d for d in dirnames if d != "__pycache__"]
        for f in filenames:
            if not f.endswith(".py"):
                continue
            path = os.path.join(dirpath, f)
            src = open(path).read()
            rel = os.path.relpath(path, ROOT)
            if len(src.splitlines()) > 400:
                long_modules.append((rel, len(src.splitlines())))
            for n in ast.walk(ast.parse(src)):
                if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) \
                        and n.end_lineno - n.lineno + 1 > 60 and n.name != "base_config":
                    long_functions.append((rel, n.name, n.end_lineno - n.lineno + 1))
    assert not long_modules and not long_functions, (long_modules, long_functions)


def test_train_and_data_read_typed_settings_never_a_configdict():
    """train/ and data/ import no ml_collections: they receive thinjax.settings' frozen
    dataclasses (assemble resolves a ConfigDict once, through thinjax.settings)."""
    for sub in ("train", "data"):
        for f in sorted(os.listdir(os.path.join(PKG, sub))):
            if f.endswith(".py"):
                src = open(os.path.join(PKG, sub, f)).read()
                tree = ast.parse(src)
                names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import)
                         for a in n.names} | {n.module for n in ast.walk(tree)
                                              if isinstance(n, ast.ImportFrom) and n.module}
                assert not any(m.startswith("ml_collections") for m in names), (sub, f)
                assert ".to_json_best_effort(" not in src, (sub, f)
