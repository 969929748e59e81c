"""The architecture the README's Layout section describes, checked on the source: the core
(``compressor/``) imports no plugin (``passes/``, ``targets/``) module, except through the
registry's strings; a target imports no pass (a pass may import a target); no import cycle exists
among the modules of the three packages, counting imports inside functions too (a lazy import is
still a dependency); and only a family's adapter (``passes/families/``) names the module paths of
its models (``attention.self``, ``encoder.layer``, ``word_embeddings``, ...)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("compressor", "passes", "targets")
PLUGINS = ("passes", "targets")
ADAPTERS = ROOT / "passes" / "families"
# Module paths of the BERT family: named in code only by its adapter.
FAMILY_PATHS = ("attention.self", "attention.output", "intermediate.dense", "output.dense", "encoder.layer",
                "word_embeddings", "position_embeddings", "token_type_embeddings")
_FAMILY_PATH = re.compile(r"(?<!\w)(?:" + "|".join(re.escape(f) for f in FAMILY_PATHS) + r")(?!\w)")
_FAMILY_ATTRS = {tuple(f.split(".")) for f in FAMILY_PATHS if "." in f}  # x.attention.self, ...
_FAMILY_NAMES = {f for f in FAMILY_PATHS if "." not in f}               # x.word_embeddings, ...


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


def _crossings(graph: dict[str, set[str]], source: str, into: tuple[str, ...]) -> list[str]:
    """``"mod -> dep"`` for every import from a module of package ``source`` into one of ``into``."""
    return sorted(f"{mod} -> {dep}" for mod, deps in graph.items() if mod.split(".")[0] == source
                  for dep in deps if dep.split(".")[0] in into)


def _family_paths(path: Path) -> list[str]:
    """``"file:line: what"`` for each family module path ``path`` names in code: a string constant
    holding one (docstrings and other bare strings are documentation, not counted), or an
    attribute chain such as ``.attention.self`` or ``.word_embeddings``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docs = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant)}
    hits = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
            hits += [(node.lineno, f"{m!r} in {node.value!r}") for m in _FAMILY_PATH.findall(node.value)]
        elif isinstance(node, ast.Attribute):
            inner = node.value.attr if isinstance(node.value, ast.Attribute) else None
            if (inner, node.attr) in _FAMILY_ATTRS:
                hits.append((node.lineno, f".{inner}.{node.attr}"))
            elif node.attr in _FAMILY_NAMES:
                hits.append((node.lineno, f".{node.attr}"))
    where = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path.name
    return [f"{where}:{line}: {what}" for line, what in sorted(hits)]


def test_core_imports_no_plugin():
    bad = _crossings(_graph(), "compressor", PLUGINS)
    assert not bad, "the core imports plugin modules (use the registry's lazy tables): " + "; ".join(bad)


def test_config_is_a_leaf():
    """The run's settings import nothing of the project but its errors (the checks that need the
    registry, the gates or MLflow are the run's)."""
    assert _graph()["compressor.config"] <= {"compressor.errors"}


def test_targets_import_no_pass():
    bad = _crossings(_graph(), "targets", ("passes",))
    assert not bad, "targets import passes (a pass may call a target, not the reverse): " + "; ".join(bad)


def test_family_module_paths_only_in_adapters():
    """A pass, a target or the core reaches a model's parts through its family's adapter
    (``passes/families/``), never by BERT's module names."""
    files = [p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py")) if ADAPTERS not in p.parents]
    bad = [hit for p in files for hit in _family_paths(p)]
    assert not bad, "family module paths named outside passes/families/ (ask the adapter): " + "; ".join(bad)


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
    graph = {"targets.t": {"passes.p", "compressor.c"}, "passes.p": {"targets.t"}, "compressor.c": set()}
    assert _crossings(graph, "targets", ("passes",)) == ["targets.t -> passes.p"]
    assert _crossings(graph, "compressor", PLUGINS) == []


def test_the_family_path_check_can_fail(tmp_path):
    """Strings and attribute chains are found; docstrings, config keys such as
    ``max_position_embeddings`` and look-alikes such as ``encoder.layers`` are not."""
    src = tmp_path / "probe.py"
    src.write_text('''"""Reaches bert.encoder.layer and attention.self (a docstring)."""
def f(model, config, layer):
    """attention.output.dense, word_embeddings: documentation."""
    a = getattr(model, "word_embeddings")
    b = f"{layer}.attention.self.query"
    c = layer.intermediate.dense
    d = model.bert.embeddings.position_embeddings
    e = config.max_position_embeddings, "encoder.layers", layer.output, layer.attention
    return model.bert.encoder.layer
''')
    assert [h.split(": ", 1)[1] for h in _family_paths(src)] == [
        "'word_embeddings' in 'word_embeddings'", "'attention.self' in '.attention.self.query'",
        ".intermediate.dense", ".position_embeddings", ".encoder.layer"]


@pytest.mark.parametrize("plugin", PLUGINS)
def test_plugin_tables_need_no_heavy_imports(plugin):
    """The registry reads the plugins' tables by importing the package alone: its __init__ must
    not import torch, onnx or onnxruntime (``import compressor`` stays light)."""
    tree = ast.parse((ROOT / plugin / "__init__.py").read_text(encoding="utf-8"))
    assert not [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]
