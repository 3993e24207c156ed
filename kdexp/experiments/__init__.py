"""Experiment kinds, one registry: the plain teacher -> student experiment and every variant.

`variant=<name>` (conf/variant/<name>.yaml sets `variant.name`) chooses a kind; without one the kind is
`standard`. Each entry maps a name to "module:function"; the function takes (conf, run_dir, cell) — the
run's frozen config, its output folder and its matrix cell key — and returns the final metrics. Modules are
imported only when chosen, and no kind imports another: shared steps live in kdexp.training.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Mapping

from kdexp.config.errors import ConfigError

EXPERIMENTS: dict[str, str] = {
    "standard": "kdexp.experiments.standard:run",
    "ensemble": "kdexp.experiments.ensemble:run",
    "chain": "kdexp.experiments.chain:run",
    "born_again": "kdexp.experiments.born_again:run",
    "mutual": "kdexp.experiments.mutual:run",
    "augmented": "kdexp.experiments.augmented:run",
    "quantized": "kdexp.experiments.quantized:run",
    "policy": "kdexp.experiments.policy:run",
}


def experiment_kind(conf: Mapping) -> str:
    node = conf.get("variant")
    name = node.get("name") if node else "standard"
    if name not in EXPERIMENTS or (node and name == "standard"):
        raise ConfigError(f"variant.name={name!r} is invalid: choose one of: "
                          f"{', '.join(sorted(set(EXPERIMENTS) - {'standard'}))}")
    return name


def run_experiment(cfg: Any, run_dir: str | Path = ".") -> dict[str, float]:
    """Validate the config and dispatch it to its kind; with `tune.enabled` (a tuned matrix), the best
    settings of each of the cell's (pair, method) studies — found or run first, on the validation split — are
    merged into the config, one cell per study repeat; with `skip_finished`, a FINISHED run of the same matrix
    cell is returned instead of training again."""
    from kdexp.config.parse import parse_config, thaw

    conf = parse_config(cfg, stores=True)
    if not (conf.get("tune") or {}).get("enabled"):
        return _dispatch(conf, run_dir)
    from kdexp.bench.tuning import apply_tuning, repeats

    metrics: dict[str, float] = {}
    count = repeats(conf)
    for repeat in range(count):  # one cell per study repeat; the last one's metrics are returned
        tuned = thaw(conf)
        tags = apply_tuning(tuned, run=run_experiment, repeat=repeat)  # trials run this function, untuned
        metrics = _dispatch(parse_config({**tuned, "tune": {**tuned["tune"], "enabled": False, "tags": tags}}),
                            Path(run_dir) / f"repeat{repeat}" if count > 1 else run_dir)
        if not tags:  # a method with nothing to search: one cell, untuned
            break
    return metrics


def _dispatch(conf, run_dir: str | Path) -> dict[str, float]:
    from kdexp.bench.matrix import cell_key, cell_lease, finished_cell_metrics

    module, function = EXPERIMENTS[experiment_kind(conf)].split(":")
    cell = cell_key(conf)
    with cell_lease(conf, cell):  # a cell another process is training: wait, then find it finished
        finished = finished_cell_metrics(conf, cell)
        if finished is not None:
            return finished
        return getattr(importlib.import_module(module), function)(conf, Path(run_dir), cell)
