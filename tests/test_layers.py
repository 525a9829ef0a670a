"""The house's layering: imports only point down the data flow (the issue's acceptance, checked on the source)."""

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "searchrl"


def imported_packages(path: Path) -> set[str]:
    """searchrl subpackages a module imports (absolute or relative), at any depth of the file."""
    pkg = path.relative_to(SRC).parts[:-1]  # e.g. ("relevance",)
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the module's package
                base = list(pkg[:len(pkg) - (node.level - 1)]) if node.level > 1 else list(pkg)
                names = [".".join(base + ([node.module] if node.module else []))]
            elif node.module and node.module.startswith("searchrl"):
                names = [node.module.removeprefix("searchrl").lstrip(".")]
        elif isinstance(node, ast.Import):
            names = [a.name.removeprefix("searchrl").lstrip(".") for a in node.names if a.name.startswith("searchrl")]
        found.update(n.split(".")[0] for n in names if n)
    return found


def imports_of(package: str) -> dict[str, set[str]]:
    return {str(p.relative_to(SRC)): imported_packages(p) for p in (SRC / package).rglob("*.py")}


def test_rl_core_imports_no_recipe():
    for module, pkgs in imports_of("rl").items():
        assert not pkgs & {"relevance", "retrieval", "serve", "eval"}, (module, pkgs)


def test_nothing_below_serve_imports_it():
    for package in ("relevance", "retrieval", "rl", "data", "eval"):
        for module, pkgs in imports_of(package).items():
            assert "serve" not in pkgs, module


def test_data_is_the_bottom_layer():
    for module, pkgs in imports_of("data").items():
        assert not pkgs & {"relevance", "retrieval", "serve", "rl", "eval"}, (module, pkgs)


def test_the_checker_sees_relative_and_absolute_imports(tmp_path):
    assert imported_packages(SRC / "relevance" / "scorer.py") >= {"data", "relevance"}
    assert "rl" in imported_packages(SRC / "relevance" / "model.py")
