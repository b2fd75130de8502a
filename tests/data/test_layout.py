"""The data package's arrows: it knows no model or task, the networks know no data module,
and its modules import each other without cycles."""

import ast
from pathlib import Path

import tsformer

PACKAGE = Path(tsformer.__file__).resolve().parent


def _imports(path: Path) -> set[str]:
    """``tsformer.*`` modules a file imports, function-level imports included."""
    mod = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    pkg = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(pkg.split(".")[: len(pkg.split(".")) - node.level + 1] + ([base] if base else []))
            out |= {base} | {f"{base}.{a.name}" for a in node.names}  # from package import module
    return {m for m in out if m.startswith("tsformer")}


def _modules(sub: str) -> dict[str, set[str]]:
    return {".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__"): _imports(p)
            for p in sorted((PACKAGE / sub).rglob("*.py"))}


def test_data_imports_no_model_task_or_entry_point():
    for mod, imports in _modules("data").items():
        bad = {m for m in imports if m.startswith(("tsformer.nn", "tsformer.tasks", "tsformer.train"))}
        assert not bad, f"{mod} imports {bad}"


def test_networks_import_no_data_module():
    for mod, imports in _modules("nn").items():
        assert not {m for m in imports if m.startswith("tsformer.data")}, mod


def test_data_modules_import_each_other_without_cycles():
    graph = _modules("data")
    edges = {m: {i for i in imports if i in graph and i != m} for m, imports in graph.items()}
    done: set[str] = set()

    def visit(m: str, path: list[str]) -> None:
        assert m not in path, "import cycle: " + " -> ".join(path[path.index(m):] + [m])
        if m in done:
            return
        for n in sorted(edges[m]):
            visit(n, path + [m])
        done.add(m)

    for m in sorted(graph):
        visit(m, [])


def test_attention_math_imports_only_torch_and_itself():
    """DESIGN.md: ``tsformer/attention/`` is stateless math on tensors; nothing points up."""
    for mod, imports in _modules("attention").items():
        bad = {m for m in imports if not m.startswith("tsformer.attention")}
        assert not bad, f"{mod} imports {bad}"
    for path in sorted((PACKAGE / "attention").rglob("*.py")):
        tops = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                tops |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and not node.level:
                tops.add((node.module or "").split(".")[0])
        assert tops <= {"torch", "tsformer", "__future__", "math", "collections", "dataclasses", "typing",
                        "warnings", "functools", "itertools"}, (path.name, tops)


def test_layers_use_no_task_or_entry_point():
    for mod, imports in _modules("nn").items():
        bad = {m for m in imports if m.startswith(("tsformer.tasks", "tsformer.train"))}
        assert not bad, f"{mod} imports {bad}"
