"""One small name -> factory registry, shared by models and distillers."""

from __future__ import annotations

from typing import Callable, Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, Callable[..., T]] = {}

    def register(self, name: str | None = None) -> Callable[[Callable[..., T]], Callable[..., T]]:
        def deco(fn: Callable[..., T]) -> Callable[..., T]:
            key = name or fn.__name__
            if key in self._items:
                raise ValueError(f"{self.kind} {key!r} is registered twice")
            self._items[key] = fn
            return fn

        return deco

    def get(self, name: str) -> Callable[..., T]:
        try:
            return self._items[name]
        except KeyError:
            raise ValueError(
                f"unknown {self.kind} {name!r}; choose one of: {', '.join(sorted(self._items))}"
            ) from None

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items


def declared_names(package: str, decorator: str) -> list[str]:
    """The names a package registers with `@<decorator>(...)`, read from its source without importing it
    (importing the zoo imports torch: seconds that config validation should not wait for). A decorator's
    string argument is the name, else the decorated function's or class's own name."""
    import ast
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec(package)
    names: set[str] = set()
    for folder in spec.submodule_search_locations or []:
        for path in Path(folder).glob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                    names.update(_registered(node, decorator))
    return sorted(names)


def _registered(node, decorator: str) -> list[str]:
    import ast

    found = []
    for deco in node.decorator_list:
        if isinstance(deco, ast.Call) and ast.unparse(deco.func) == decorator:
            arg = deco.args[0] if deco.args else None
            found.append(arg.value if isinstance(arg, ast.Constant) and isinstance(arg.value, str) else node.name)
    return found


def known_names(package: str, decorator: str, registry_module: str, registry: str) -> list[str]:
    """Registered names without importing `package`, or from its registry once imported (it then also holds
    what plug-ins registered, kdexp/config/plugins.py)."""
    import sys

    module = sys.modules.get(registry_module)
    if module is not None:
        return getattr(module, registry).names()
    return declared_names(package, decorator)
