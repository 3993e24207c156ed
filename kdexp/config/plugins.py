"""Users' own models, data sets and methods, used from the CLI without editing kdexp.

A plug-in is an importable Python module that registers what it brings with kdexp's registries:
`@register_model("name")` (kdexp.models), `@register_method("name")` (kdexp.distill),
`@DATASETS.register("name")` (kdexp.data). kdexp imports it before the config is composed, so its names are
valid choices everywhere (`student=name`, `distill.name=name`, `data.name=name`):

- `imports=[my_models,lab.methods]` on the command line (modules importable from the working directory),
- `KDEXP_PLUGINS=my_models,lab.methods` in the environment,
- an installed package's entry point in the group `kdexp.config.plugins` (any object; importing it is the point).

Config files for them (e.g. distill/my_method.yaml) come from a folder of config groups added with
`hydra.searchpath=[file://my_conf]`.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
from importlib.metadata import entry_points

from kdexp.config.errors import ConfigError

ENTRY_POINT_GROUP = "kdexp.plugins"
ENV = "KDEXP_PLUGINS"
_loaded: set[str] = set()


def requested_imports(argv: list[str]) -> list[str]:
    """The modules of an `imports=[a,b]` / `+imports=a` override among command-line arguments."""
    names: list[str] = []
    for arg in argv:
        m = re.fullmatch(r"\+{0,2}imports=\[?([^\]]*)\]?", arg.strip())
        if m:
            names += [n.strip().strip("'\"") for n in m.group(1).split(",") if n.strip()]
    return names


def plugin_modules(extra: list[str] | tuple[str, ...] = ()) -> list[str]:
    from_env = [n.strip() for n in os.environ.get(ENV, "").split(",") if n.strip()]
    return [*from_env, *extra]


def load_plugins(names: list[str] | tuple[str, ...] = ()) -> list[str]:
    """Import the plug-ins (`names`, $KDEXP_PLUGINS, and the `kdexp.config.plugins` entry points) once each."""
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # `imports=[my_models]` means ./my_models.py, as `python -m` would
    done = []
    for name in plugin_modules(list(names)):
        if name in _loaded:
            continue
        try:
            importlib.import_module(name)
        except Exception as exc:  # noqa: BLE001  (a plug-in's own error, named with the key that asked for it)
            raise ConfigError(f"imports: cannot import plug-in {name!r} ({type(exc).__name__}: {exc}); "
                              "give a module importable from the working directory, e.g. imports=[my_models] "
                              "for ./my_models.py") from None
        _loaded.add(name)
        done.append(name)
    for point in entry_points(group=ENTRY_POINT_GROUP):
        if point.value not in _loaded:
            point.load()
            _loaded.add(point.value)
            done.append(point.value)
    return done
