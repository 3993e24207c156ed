"""Samplers and pruners from the sweeper's plain-dict settings.

The pruner is also rebuilt job-side (from the spec stored in the study), because
``trial.should_prune()`` runs in the job process, which may be another process or host.
"""

from __future__ import annotations

import functools
import inspect
import logging
import warnings
from collections.abc import Mapping
from typing import Any

import optuna

from kdexp.config.errors import ConfigError

from .samplers import SAMPLERS

log = logging.getLogger(__name__)

PRUNERS = ("median", "sha", "hyperband", "none")
PRUNER_ARGS = {  # the settings that matter per pruner, for describe()
    "median": ("n_startup_trials", "n_warmup_steps", "interval_steps"),
    "sha": ("min_resource", "reduction_factor"),
    "hyperband": ("min_resource", "max_resource", "reduction_factor"),
}
_SPECIAL = ("_target_", "_partial_", "_args_", "_recursive_", "_convert_")


def sampler_spec(raw: Any) -> Any:
    """The sampler setting, checked before anything is created: a ``_target_`` node (the official group and
    form), kdexp's short ``{name: tpe, seed: 0, ...}`` (kdexp.bench.tuning), or a sampler object.

    Args:
        raw: ``hydra.sweeper.sampler`` as a plain dict, or an Optuna sampler (or partial of one).

    Returns:
        A dict with ``_target_`` and the constructor arguments, or ``raw`` itself when it is an object.

    Raises:
        ConfigError: unknown sampler name, a ``_target_`` that is no Optuna sampler, an unknown argument.
    """
    if not isinstance(raw, Mapping):
        return raw
    spec = dict(raw)
    if "name" in spec:
        name = str(spec.pop("name")).lower()
        if name not in SAMPLERS:
            raise ConfigError(f"hydra.sweeper.sampler.name={name}: unknown sampler; choose one of: "
                              f"{', '.join(SAMPLERS)}")
        if "_target_" in spec and spec["_target_"] != SAMPLERS[name]["_target_"]:
            raise ConfigError(f"hydra.sweeper.sampler.name={name} contradicts sampler._target_={spec['_target_']}; "
                              f"choose the sampler with hydra/sweeper/sampler={name}")
        spec = {**SAMPLERS[name], **{k: v for k, v in spec.items() if k != "_target_"}}
    cls = sampler_class(spec.get("_target_"))
    accepted = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "search_space")]
    unknown = sorted(k for k in spec if k not in accepted and k not in _SPECIAL)
    if unknown:
        raise ConfigError(f"hydra.sweeper.sampler.{unknown[0]}: not an argument of {cls.__name__}; "
                          f"it takes: {', '.join(accepted)}")
    return spec


def sampler_class(target: Any) -> type:
    """The class a ``sampler._target_`` names; ConfigError unless it is an Optuna sampler."""
    choices = ", ".join(sorted({s["_target_"] for s in SAMPLERS.values()}))
    try:
        from hydra.utils import get_class

        cls = get_class(str(target))
    except Exception:  # noqa: BLE001 - not importable, or not a class
        cls = None
    if not (isinstance(cls, type) and issubclass(cls, optuna.samplers.BaseSampler)):
        raise ConfigError(f"hydra.sweeper.sampler._target_={target}: not an Optuna sampler; choose "
                          f"hydra/sweeper/sampler={'|'.join(SAMPLERS)} or a _target_ such as: {choices}")
    return cls


def is_grid(spec: Any) -> bool:
    if isinstance(spec, Mapping):
        return issubclass(sampler_class(spec.get("_target_")), optuna.samplers.GridSampler)
    return isinstance(spec, functools.partial) and spec.func is optuna.samplers.GridSampler


def build_sampler(spec: Any, seed_offset: int = 0, grid: dict | None = None) -> optuna.samplers.BaseSampler:
    """The sampler of `sampler_spec`. Only arguments set (not null) and unlike the constructor's defaults are
    passed (the official group lists deprecated ones at their defaults, which would warn); a seed is offset by the
    study's trial count, so a resumed sweep or a second worker does not replay the first one's draws.

    Args:
        spec: from `sampler_spec`.
        seed_offset: added to a given seed.
        grid: every value per param, for the grid sampler.

    Returns:
        The Optuna sampler.
    """
    if not isinstance(spec, Mapping):  # an object (or a GridSampler partial), as the official plugin takes
        return spec(grid) if isinstance(spec, functools.partial) else spec
    cls = sampler_class(spec["_target_"])
    defaults = {name: p.default for name, p in inspect.signature(cls.__init__).parameters.items()}
    kwargs = {k: v for k, v in spec.items()
              if k not in _SPECIAL and v is not None and v != defaults.get(k, inspect.Parameter.empty)}
    if kwargs.get("seed") is not None:
        kwargs["seed"] = int(kwargs["seed"]) + seed_offset
    kwargs = {k: instantiate(v) if isinstance(v, Mapping) and "_target_" in v else v for k, v in kwargs.items()}
    if cls is optuna.samplers.CmaEsSampler:
        try:
            import cmaes  # noqa: F401  (Optuna only fails at the first ask without it)
        except ImportError as exc:
            raise ConfigError("hydra/sweeper/sampler=cmaes needs the cmaes package: pip install cmaes") from exc
    if issubclass(cls, optuna.samplers.GridSampler):
        assert grid is not None, "grid sampler needs its search space"
        return _AskTellGridSampler(grid, **kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # constant_liar, group, ...
        return cls(**kwargs)


def instantiate(node: Mapping) -> Any:
    """A nested ``_target_`` argument (e.g. CmaEsSampler's independent_sampler)."""
    from hydra.utils import instantiate as hydra_instantiate

    return hydra_instantiate(dict(node))


def describe_sampler(spec: Any) -> str:
    """e.g. ``TPESampler(seed=0, n_startup_trials=8)``: the class and the arguments that differ from its
    defaults, for MLflow params and logs."""
    if not isinstance(spec, Mapping):
        return type(spec).__name__ if not isinstance(spec, functools.partial) else spec.func.__name__
    cls = sampler_class(spec["_target_"])
    defaults = {name: p.default for name, p in inspect.signature(cls.__init__).parameters.items()}
    args = ", ".join(f"{k}={v}" for k, v in spec.items()
                     if k not in _SPECIAL and v is not None and v != defaults.get(k))
    return f"{cls.__name__}({args})"


class _AskTellGridSampler(optuna.samplers.GridSampler):
    # GridSampler calls study.stop() once the grid is exhausted, which raises outside
    # study.optimize(); the sweeper caps n_trials at the grid size instead.
    def after_trial(self, study, trial, state, values) -> None:  # type: ignore[override]
        return None


def pruner_spec(spec: Mapping[str, Any], n_objectives: int) -> dict[str, Any]:
    """The JSON-able spec stored in the study (user attr ``kdexp.pruner``)."""
    out = {k: spec[k] for k in spec}
    out["name"] = str(out.get("name", "median")).lower()
    if out["name"] not in PRUNERS:
        raise ConfigError(f"hydra.sweeper.pruner.name={out['name']}: unknown pruner; choose one of: "
                          f"{', '.join(PRUNERS)}")
    if n_objectives > 1 and out["name"] != "none":
        log.warning(
            "Optuna cannot prune multi-objective studies: pruner %r is replaced by 'none'", out["name"]
        )
        out["name"] = "none"
    return out


def build_pruner(spec: Mapping[str, Any] | None) -> optuna.pruners.BasePruner:
    spec = spec or {"name": "none"}
    name = spec.get("name", "none")
    if name == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=int(spec.get("n_startup_trials", 5)),
            n_warmup_steps=int(spec.get("n_warmup_steps", 0)),
            interval_steps=int(spec.get("interval_steps", 1)),
        )
    if name == "sha":
        return optuna.pruners.SuccessiveHalvingPruner(
            min_resource=spec.get("min_resource", "auto"),
            reduction_factor=int(spec.get("reduction_factor", 4)),
        )
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=int(spec.get("min_resource", 1)),
            max_resource=spec.get("max_resource", "auto"),
            reduction_factor=int(spec.get("reduction_factor", 3)),
        )
    if name == "none":
        return optuna.pruners.NopPruner()
    raise ValueError(f"unknown pruner {name!r}; choose one of: {', '.join(PRUNERS)}")


def describe(spec: Mapping[str, Any], keys: tuple[str, ...]) -> str:
    """e.g. ``median(n_startup_trials=5, n_warmup_steps=2)`` for MLflow params and logs."""
    args = ", ".join(f"{k}={spec[k]}" for k in keys if k in spec)
    return f"{spec.get('name')}({args})"
