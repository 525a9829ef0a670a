"""The house's layering: imports only point down the data flow, and no two files import each other.

Every module of src/searchrl belongs to the first layer of LAYERS its dotted name starts with; it may
import its own layer and the layers before it, at any depth of the file (function-local imports
included). The module graph, every import counted, has no loops.
"""

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "searchrl"

# The declared order, bottom first: the data flow of the package (README "Layout").
LAYERS = [
    "errors", "faults", "config", "checkpoint", "training", "stage_records",  # the shared core: errors, configs,
    #   the run loop, what a finished stage records
    "data",  # datasets: registry, readers, importer, schema
    "metrics",  # relevance and retrieval measures, bootstrap intervals and verdicts
    "lexical",  # BM25
    "rl",  # the RL losses and sampling, recipe-free
    "relevance.format", "relevance.rules", "relevance.model", "relevance.scoring", "relevance.train", "relevance",
    "retrieval",  # the dense retriever, judged by the relevance model
    "eval",  # baselines, plots, the report
    "pipeline",  # every stage in one command
    "serve",  # the HTTP server
    "commands", "cli",  # the command line
    "",  # searchrl/__init__.py: the Python API
]


def module_name(path: Path, root: Path = SRC) -> str:
    """Dotted name under searchrl: relevance/train/sft.py -> 'relevance.train.sft'; a package's __init__ -> the package."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(name: str) -> int:
    """Rank in LAYERS of the first layer that is `name` or a package above it."""
    for rank, layer in enumerate(LAYERS):
        if name == layer or name.startswith(layer + ".") or layer == "":
            return rank
    raise AssertionError(f"{name} is in no layer")


def imported_modules(source: str, name: str, is_package: bool, root: Path = SRC) -> set[str]:
    """searchrl modules (dotted, without 'searchrl.') a module's source imports, at any depth, relative ones resolved.

    ``from searchrl.x import y`` counts as importing 'x.y' when y is a module of x, else 'x'; both land in x's layer.
    """
    package = name.split(".") if is_package else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            elif node.module and (node.module == "searchrl" or node.module.startswith("searchrl.")):
                target = node.module.removeprefix("searchrl").lstrip(".")
            else:
                continue
            subs = [f"{target}.{a.name}".lstrip(".") for a in node.names
                    if (root / Path(*f"{target}.{a.name}".lstrip(".").split("."))).with_suffix(".py").exists()
                    or (root / Path(*f"{target}.{a.name}".lstrip(".").split(".")) / "__init__.py").exists()]
            found.update(subs or [target])
        elif isinstance(node, ast.Import):
            found.update(a.name.removeprefix("searchrl").lstrip(".") for a in node.names
                         if a.name == "searchrl" or a.name.startswith("searchrl."))
    return found


def module_graph(root: Path = SRC) -> dict[str, set[str]]:
    graph = {}
    for path in root.rglob("*.py"):
        name = module_name(path, root)
        graph[name] = {m for m in imported_modules(path.read_text(), name, path.name == "__init__.py", root) if m != name}
    return graph


def upward_imports(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    """(module, imported) pairs where the import points up the declared order."""
    return sorted((m, t) for m, targets in graph.items() for t in targets if layer_of(t) > layer_of(m))


def import_loops(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (a package counts as its __init__)."""
    index, low, stack, on, loops, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in graph:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                loops.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return loops


def test_every_module_imports_only_down_the_layers():
    assert upward_imports(module_graph()) == []


def test_no_import_loops_between_files():
    assert import_loops(module_graph()) == []


def test_every_module_has_a_layer():
    for name in module_graph():
        layer_of(name)  # raises for a module outside every layer


def test_the_checker_catches_a_reversed_import_at_any_depth(tmp_path):
    """A function-local import of a higher layer, and a relative one, are both caught."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "__init__.py").write_text("")
    (tmp_path / "data" / "schema.py").write_text("def f():\n    from searchrl.relevance.train import sft\n")
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics" / "__init__.py").write_text("")
    (tmp_path / "metrics" / "measures.py").write_text("from ..pipeline import runner\n")
    graph = module_graph(tmp_path)
    assert ("data.schema", "relevance.train") in upward_imports(graph)
    assert ("metrics.measures", "pipeline") in upward_imports(graph)
    graph["data.schema"] = {"errors", "config"}  # downward: allowed
    assert upward_imports(graph) == [("metrics.measures", "pipeline")]


def test_the_checker_finds_a_loop():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert import_loops(graph) == [["a", "b", "c"]]
    assert import_loops({"a": {"b"}, "b": set()}) == []
