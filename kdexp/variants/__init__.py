"""The variants of an experiment, one registry: `standard` (teacher -> student) and every kind chosen with
`variant=<name>` (conf/variant/<name>.yaml sets `variant.name`; without one the variant is `standard`).

Each variant is a module here whose `run(conf, run_dir, cell)` — the run's frozen config, its output folder and
its matrix cell key — is registered with `@register_variant("<name>")` and returns the final metrics. A module
is imported only when its variant is chosen (names are read from the source until then, as the zoo's are), and
no variant imports another: shared steps live in kdexp.training.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Callable, Mapping

from kdexp.config.errors import ConfigError
from kdexp.config.registry import Registry, declared_names

VARIANTS: Registry[Callable[..., dict]] = Registry("variant")
register_variant = VARIANTS.register


def variant_names() -> list[str]:
    """Every variant's name, without importing the variants (their modules import torch): those declared in
    this package's source and those registered so far (a plug-in's)."""
    return sorted(set(declared_names("kdexp.variants", "register_variant")) | set(VARIANTS.names()))


def experiment_kind(conf: Mapping) -> str:
    node = conf.get("variant")
    name = node.get("name") if node else "standard"
    names = variant_names()
    if name not in names or (node and name == "standard"):
        raise ConfigError(f"variant.name={name!r} is invalid: choose one of: "
                          f"{', '.join(sorted(set(names) - {'standard'}))}")
    return name


def variant_run(name: str) -> Callable[..., dict]:
    """The registered run function of a variant, importing its module (kdexp.variants.<name>) first."""
    if name not in VARIANTS:
        importlib.import_module(f"kdexp.variants.{name}")
    return VARIANTS.get(name)


def run_experiment(cfg: Any, run_dir: str | Path = ".") -> dict[str, float]:
    """Validate the config and dispatch it to its kind; with `tune.enabled` (a tuned matrix), the best
    settings of each of the cell's (pair, method) studies — found or run first, on the validation split — are
    merged into the config, one cell per study repeat; an untuned matrix with `tune.match_budget: true` takes a
    student init stage's epochs from trainer.max_epochs; with `skip_finished`, a FINISHED run of the same matrix
    cell is returned instead of training again."""
    from kdexp.config.parse import parse_config, thaw

    conf = parse_config(cfg, stores=True)
    tune = conf.get("tune") or {}
    if not tune.get("enabled"):
        if tune.get("match_budget"):  # an untuned matrix with matched budgets (tuned ones: in apply_tuning)
            from kdexp.bench.tuning import match_budget, tune_settings

            conf = thaw(conf)
            match_budget(conf, tune_settings(conf))
            conf = parse_config(conf)
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

    run = variant_run(experiment_kind(conf))
    cell = cell_key(conf)
    with cell_lease(conf, cell):  # a cell another process is training: wait, then find it finished
        finished = finished_cell_metrics(conf, cell)
        if finished is not None:
            return finished
        return run(conf, Path(run_dir), cell)
