"""kdexp's layering: cli -> experiments -> training -> module -> leaves; no module imports a higher layer,
and there is no import cycle anywhere in kdexp/ (lazy imports inside functions count too)."""

from __future__ import annotations

import ast
from pathlib import Path

import kdexp

ROOT = Path(kdexp.__file__).parent
# Higher number = higher layer. Modules not listed are leaves (0): methods, models, data, caches, tracking, ...
LAYERS = {"kdexp.cli": 4, "kdexp.experiments": 3, "kdexp.training": 2, "kdexp.module": 1}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(name: str) -> int:
    return max((v for k, v in LAYERS.items() if name == k or name.startswith(k + ".")), default=0)


def imports() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in ROOT.rglob("*.py"):
        name, targets = module_name(path), set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets.add(node.module)
            elif isinstance(node, ast.Import):
                targets.update(a.name for a in node.names)
        graph[name] = {t for t in targets if t == "kdexp" or t.startswith("kdexp.")}
    return graph


def test_no_module_imports_a_higher_layer():
    upward = [(m, t) for m, targets in imports().items() for t in targets if layer(t) > layer(m)]
    assert upward == []


def test_experiment_kinds_do_not_import_each_other():
    graph = imports()
    kinds = {m for m in graph if m.startswith("kdexp.experiments.")}
    assert kinds and all(not (graph[m] & kinds) for m in kinds)


def test_no_import_cycles():
    graph = imports()
    nodes = set(graph)

    def resolve(target: str) -> str | None:  # `from kdexp.x import y` may name a module or a symbol of one
        while target and target not in nodes:
            target = target.rpartition(".")[0]
        return target or None

    edges = {m: {r for t in ts if (r := resolve(t)) and r != m and not m.startswith(r + ".")}
             for m, ts in graph.items()}
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for t in edges.get(m, ()):
            if state.get(t) == 1:
                cycles.append(path[path.index(t):] + [t] if t in path else [m, t])
            elif t not in state:
                visit(t, path + [t])
        state[m] = 2

    for m in sorted(edges):
        if m not in state:
            visit(m, [m])
    assert cycles == []
