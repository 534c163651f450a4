"""The dependency rules of docs/DESIGN.md, checked on the static import graph of the packages.

Every ``import`` and ``from ... import`` counts, at module level or inside a function, typing-only
ones too. ``from pkg import name`` where ``name`` is not a submodule is an edge to ``pkg`` itself (its
``__init__.py``), so a method module importing a registry from the package that imports it is a cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("ruleengine", "executors")


def _modules() -> dict[str, Path]:
    out: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


MODULES = _modules()


def _resolve(module: str, is_package: bool, level: int, target: str | None) -> str:
    base = module.split(".") if is_package else module.split(".")[:-1]
    if level:
        base = base[: len(base) - (level - 1)] if level > 1 else base
        return ".".join(base + ([target] if target else []))
    return target or ""


def edges(module: str) -> set[str]:
    """Return the project modules ``module`` imports (see the module docstring for the rules)."""
    path = MODULES[module]
    is_package = path.name == "__init__.py"
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in MODULES:
                    out.add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            source = _resolve(module, is_package, node.level, node.module)
            for alias in node.names:
                sub = f"{source}.{alias.name}"
                if sub in MODULES:
                    out.add(sub)
                elif source in MODULES:
                    out.add(source)
    out.discard(module)
    return out


GRAPH = {m: edges(m) for m in MODULES}


def _cycles() -> list[list[str]]:
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in GRAPH:
        if v not in index:
            visit(v)
    return found


def test_the_graph_sees_the_packages():
    assert "ruleengine.api" in GRAPH and "ruleengine.methods.lora" in GRAPH and "executors.lora.executor" in GRAPH
    assert "ruleengine.pipeline" in GRAPH["ruleengine.api"]
    assert "ruleengine.methods.spec" in GRAPH["ruleengine.methods.lora"]


def test_no_import_cycles():
    assert _cycles() == []


def test_a_registry_imported_from_its_parent_package_is_a_cycle(tmp_path, monkeypatch):
    """The checker itself: the pattern the issue names is found."""
    GRAPH_BACKUP = dict(GRAPH)
    try:
        GRAPH["ruleengine.methods"] = GRAPH["ruleengine.methods"] | {"ruleengine.methods.lora"}
        GRAPH["ruleengine.methods.lora"] = GRAPH["ruleengine.methods.lora"] | {"ruleengine.methods"}
        assert ["ruleengine.methods", "ruleengine.methods.lora"] in _cycles()
    finally:
        GRAPH.clear()
        GRAPH.update(GRAPH_BACKUP)


def test_nothing_imports_the_cli_but_the_cli():
    users = {m for m, deps in GRAPH.items() if any(d == "ruleengine.cli" or d.startswith("ruleengine.cli.") for d in deps)}
    outside = {m for m in users if not (m == "ruleengine.cli" or m.startswith("ruleengine.cli."))}
    assert outside == set(), outside


# the pipeline, bottom to top: a module may import only modules at its own level or below
LAYERS = [
    {"ruleengine.units", "ruleengine.diagnostics", "ruleengine.exitcodes", "ruleengine.yamlsafe",
     "ruleengine.paths", "ruleengine.schema_check", "ruleengine.templates", "ruleengine.jsonsafe",
     "ruleengine.safeio"},
    {"ruleengine.architecture", "ruleengine.trainable", "ruleengine.methods", "ruleengine.vocabulary",
     "ruleengine.conditions"},
    {"ruleengine.memory", "ruleengine.cost", "ruleengine.policy", "ruleengine.facts"},
    {"ruleengine.derive", "ruleengine.durable_host", "ruleengine.trace"},
    {"ruleengine.evaluate"},
    {"ruleengine.explain", "ruleengine.estimates", "ruleengine.decision"},
    {"ruleengine.whatif"},
    {"ruleengine.pipeline"},
    {"ruleengine.api", "ruleengine.audit", "ruleengine.render", "ruleengine.batchio"},
]


def _layer(module: str) -> int | None:
    for level, names in enumerate(LAYERS):
        if any(module == n or module.startswith(n + ".") for n in names):
            return level
    return None


@pytest.mark.parametrize("module", sorted(m for m in GRAPH if _layer(m) is not None))
def test_arrows_point_one_way(module):
    level = _layer(module)
    assert level is not None
    upward = sorted(d for d in GRAPH[module] if (_layer(d) or 0) > level)
    assert upward == [], f"{module} (layer {level}) imports {upward} from above"


def test_explanations_are_filters_over_the_trace():
    assert not GRAPH["ruleengine.explain"] & {"ruleengine.evaluate", "ruleengine.whatif", "ruleengine.pipeline"}


def test_library_never_imports_the_shells():
    shells = ("ruleengine.cli", "ruleengine.service")
    library = [m for m in GRAPH if _layer(m) is not None]
    for module in library:
        assert not any(d.startswith(shells) for d in GRAPH[module]), module
