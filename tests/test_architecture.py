"""The architecture the README's Layout section describes, checked on the source: the core
(``compressor/``) imports no plugin (``passes/``, ``targets/``) module, except through the
registry's strings; and no import cycle exists among the project's modules, counting imports
inside functions too (a lazy import is still a dependency)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("compressor", "passes", "targets")
PLUGINS = ("passes", "targets")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def _imports(path: Path, name: str, known: set[str]) -> set[str]:
    """Project modules ``path`` imports anywhere in its body (the parent packages a submodule
    import implies are not counted: Python initialises them without a cycle)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(tree):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([node.module] if node.module else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        out.update(t for t in targets if t in known and t != name)
    return out


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    return {name: _imports(path, name, set(mods)) for name, path in mods.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_core_imports_no_plugin():
    graph = _graph()
    bad = sorted(f"{mod} -> {dep}" for mod, deps in graph.items() if mod.split(".")[0] == "compressor"
                 for dep in deps if dep.split(".")[0] in PLUGINS)
    assert not bad, "the core imports plugin modules (use the registry's lazy tables): " + "; ".join(bad)


def test_no_import_cycles():
    cycles = _cycles(_graph())
    assert not cycles, "import cycles: " + "; ".join(" <-> ".join(c) for c in cycles)


def test_the_checks_can_fail(tmp_path):
    """The detectors find what they look for: a cycle in a made-up graph, and a lazy core ->
    plugin import and a relative import parsed from source."""
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []
    src = tmp_path / "probe.py"
    src.write_text("def f():\n    from passes.strip import load_stripped\n    from . import errors\n")
    known = set(_modules()) | {"compressor.probe"}
    assert _imports(src, "compressor.probe", known) == {"passes.strip", "compressor.errors"}


@pytest.mark.parametrize("plugin", PLUGINS)
def test_plugin_tables_need_no_heavy_imports(plugin):
    """The registry reads the plugins' tables by importing the package alone: its __init__ must
    not import torch, onnx or onnxruntime (``import compressor`` stays light)."""
    tree = ast.parse((ROOT / plugin / "__init__.py").read_text(encoding="utf-8"))
    assert not [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]
