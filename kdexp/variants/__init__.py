"""Experiment variants: other shapes of experiment than one teacher -> one student, chosen by `variant=<name>`.

Each entry maps a name (conf/variant/<name>.yaml sets `variant.name: <name>`) to "module:function";
the function takes (conf, run_dir, cell) like `run_experiment` after validation and returns its metrics.
Modules are imported only when chosen. Add a variant by adding one line here.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from kdexp.validate import ConfigError

VARIANTS: dict[str, str] = {
    "ensemble": "kdexp.variants.ensemble:run",
    "chain": "kdexp.variants.chain:run",
    "born_again": "kdexp.variants.born_again:run",
    "mutual": "kdexp.variants.mutual:run",
    "augmented": "kdexp.variants.augmented:run",
    "quantized": "kdexp.variants.quantized:run",
    "policy": "kdexp.policy.run:run",
}


def variant_name(conf: dict) -> str | None:
    node = conf.get("variant")
    return None if not node else node.get("name")


def run_variant(conf: dict, run_dir: Path, cell: str = "") -> dict[str, float]:
    name = variant_name(conf)
    if name not in VARIANTS:
        raise ConfigError(f"variant.name={name!r} is invalid: choose one of: {', '.join(sorted(VARIANTS))}")
    module, function = VARIANTS[name].split(":")
    return getattr(importlib.import_module(module), function)(conf, Path(run_dir), cell)
