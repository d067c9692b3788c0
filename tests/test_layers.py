"""The package's layers point down, and brainjax imports sit at module level (checked on the source, by AST).

Layers, lowest first (a module may import its own layer and the ones below; same-layer packages may not
import each other in a circle, which Python would only report at run time)::

    0  errors, paths, config, cache, distributed, sharding   helpers everyone shares
    1  data, nn                                               datasets and building blocks
    2  models                                                 networks
    3  tasks                                                  objectives (one module each, one registry)
    4  train                                                  step, trainer, checkpoints, optimizer, plans
    5  run                                                    open a work dir, restore parameters, launch
    6  eval, lm                                               what runs are used for
    7  commands, cli, brainjax/__init__.py                   argument parsing -> a Config -> one library call

Function-level imports of brainjax modules are allowed only in ``commands/``, ``cli.py`` (they keep
``brainjax --help`` fast) and the package's ``__init__`` (``brainjax.load_pretrained`` on first use: every
submodule import runs it first, so it must import nothing); anywhere else they hide an upward import or a cycle.
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "brainjax"
LAYERS = {"errors": 0, "paths": 0, "config": 0, "cache": 0, "distributed": 0, "sharding": 0, "data": 1, "nn": 1,
          "models": 2, "tasks": 3, "train": 4, "run": 5, "eval": 6, "lm": 6, "commands": 7, "cli": 7, "__init__": 7}
LAZY_ALLOWED = ("commands", "cli", "__init__")


def _unit(module: str) -> str:
    """``brainjax.data.pipeline`` -> ``data``; ``brainjax`` -> ``__init__``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _imports(path: Path) -> list[tuple[str, int, bool]]:
    """(imported brainjax module, line, at module level) of every import in ``path``."""
    tree = ast.parse(path.read_text(), str(path))
    top = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("brainjax"):
            for alias in node.names:  # `from brainjax import sharding` imports the module brainjax.sharding
                name = f"{node.module}.{alias.name}" if node.module == "brainjax" else node.module
                found.append((name, node.lineno, id(node) in top))
        elif isinstance(node, ast.Import):
            found += [(a.name, node.lineno, id(node) in top) for a in node.names if a.name.startswith("brainjax")]
    return found


def _modules() -> dict[str, Path]:
    return {".".join(("brainjax", *p.relative_to(PACKAGE).with_suffix("").parts)): p for p in PACKAGE.rglob("*.py")}


def _edges() -> list[tuple[str, str, str]]:
    """(importing unit, imported unit, "file:line") for every brainjax import between different units."""
    edges = []
    for module, path in _modules().items():
        for target, line, _ in _imports(path):
            if _unit(module) != _unit(target):
                edges.append((_unit(module), _unit(target), f"{path.relative_to(PACKAGE.parent)}:{line}"))
    return edges


def test_every_unit_has_a_layer():
    assert {_unit(m) for m in _modules()} <= set(LAYERS), "add the new package to LAYERS (and the README map)"


def test_no_upward_import():
    upward = [f"{where}: {src} (layer {LAYERS[src]}) imports {dst} (layer {LAYERS[dst]})"
              for src, dst, where in _edges() if LAYERS[dst] > LAYERS[src]]
    assert not upward, "\n".join(upward)


def test_same_layer_packages_do_not_import_each_other_both_ways():
    pairs = {(src, dst) for src, dst, _ in _edges() if LAYERS[src] == LAYERS[dst]}
    assert not [p for p in pairs if (p[1], p[0]) in pairs]


def test_library_imports_sit_at_module_level():
    lazy = [f"{path.relative_to(PACKAGE.parent)}:{line}: {target}"
            for module, path in _modules().items() if _unit(module) not in LAZY_ALLOWED
            for target, line, top in _imports(path) if not top]
    assert not lazy, "\n".join(lazy)


@pytest.mark.parametrize("source, expected", [
    ("def f():\n    from brainjax.data import pipeline\n", [("brainjax.data", 2, False)]),
    ("from brainjax import sharding\nimport brainjax.eval.report\n",
     [("brainjax.sharding", 1, True), ("brainjax.eval.report", 2, True)]),
])
def test_the_checker_sees_imports(tmp_path, source, expected):
    path = tmp_path / "m.py"
    path.write_text(source)
    assert _imports(path) == expected
