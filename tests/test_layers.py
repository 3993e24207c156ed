"""kdexp's layering: cli -> variants -> training -> modules -> capabilities -> leaves; no module imports a
higher layer, no top-level module but the CLI and the package face, no private name imported across modules,
and no import cycle anywhere in kdexp/ (lazy imports inside functions count too)."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import kdexp

ROOT = Path(kdexp.__file__).parent
# Higher number = higher layer. Leaves (0): methods, models, data, policy.
CAPABILITIES = ("config", "tracking", "shipping", "caching", "bench", "measure", "runtime", "report", "sweep")
LAYERS = {"kdexp.cli": 5, "kdexp.variants": 4, "kdexp.training": 3, "kdexp.modules": 2,
          **{f"kdexp.{c}": 1 for c in CAPABILITIES}}
# Capabilities are one layer; these (the config one first) are read by leaves and must import no other.
FOUNDATION = ("kdexp.config", "kdexp.caching.fingerprint", "kdexp.runtime")


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
    upward = [(m, t) for m, targets in imports().items() for t in targets if layer(t) > layer(m)
              and not (layer(m) == 0 and t.startswith(FOUNDATION))]
    assert upward == []


def test_only_the_cli_and_the_package_face_at_the_top():
    loose = sorted(p.name for p in ROOT.glob("*.py"))
    assert loose == ["__init__.py", "cli.py"]
    undocumented = [p.parent.name for p in ROOT.glob("*/__init__.py")
                    if not ast.get_docstring(ast.parse(p.read_text()))]
    assert undocumented == []


def test_config_parsing_imports_no_benchmark_machinery():
    graph = imports()
    assert not {t for m, ts in graph.items() if m.startswith("kdexp.config") for t in ts
                if t.startswith(("kdexp.bench", "kdexp.report", "kdexp.sweep"))}


def test_no_private_name_is_imported_across_modules():
    private = []
    for path in ROOT.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("kdexp"):
                private += [(module_name(path), node.module, a.name) for a in node.names
                            if a.name.startswith("_") and not a.name.startswith("__")]
    assert private == []


def test_experiment_kinds_do_not_import_each_other():
    graph = imports()
    kinds = {m for m in graph if m.startswith("kdexp.variants.")}
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


MAX_PARAMETERS = 6  # the training API stays narrow: more belongs in a spec (StageSpec, ReportSpec) or the context


def public_callables(module) -> list[tuple[str, object]]:
    """Functions defined in `module` and the methods of its classes, public names only."""
    out = []
    for name, obj in vars(module).items():
        if name.startswith("_") or getattr(obj, "__module__", None) != module.__name__:
            continue
        if inspect.isfunction(obj):
            out.append((name, obj))
        elif inspect.isclass(obj):
            out += [(f"{name}.{m}", f) for m, f in vars(obj).items()
                    if not m.startswith("_") and inspect.isfunction(f)]
    return out


def parameter_count(fn) -> int:
    return len([p for p in inspect.signature(fn).parameters if p not in ("self", "cls")])


def test_no_public_function_of_the_training_api_takes_more_than_six_parameters():
    import importlib
    import pkgutil

    import kdexp.training

    wide, seen = [], 0
    for info in pkgutil.iter_modules(kdexp.training.__path__, "kdexp.training."):
        for name, fn in public_callables(importlib.import_module(info.name)):
            seen += 1
            if parameter_count(fn) > MAX_PARAMETERS:
                wide.append(f"{info.name}.{name}: {parameter_count(fn)}")
    assert seen > 30 and wide == []


def test_the_parameter_count_sees_a_wide_function():
    import types

    module = types.ModuleType("probe")
    exec("def wide(a, b, c, d, e, f, g): ...\nclass C:\n    def m(self, a): ...", module.__dict__)
    assert [(n, parameter_count(f)) for n, f in public_callables(module)] == [("wide", 7), ("C.m", 1)]
