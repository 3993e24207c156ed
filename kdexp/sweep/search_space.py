"""Hydra sweep grammar -> Optuna distributions, and sampled values -> Hydra overrides.

Grammar (same as the official hydra-optuna-sweeper, command line or ``hydra.sweeper.params``):
``interval(a,b)`` float, ``int(interval(a,b))`` int, ``tag(log, ...)`` log scale,
``range(a,b[,step])`` stepped int/float with ``b`` INCLUDED for the samplers (Optuna's low/high, as in
the official plugin) but EXCLUDED from the grid sampler's list (Hydra's range(), as in the official plugin),
``choice(...)``/``a,b,c``/``shuffle(range())`` categorical. Anything else is a fixed override passed unchanged
to every trial. A param is named by its override key, as in the official plugin (``+w``, ``db@pkg``).
"""

from __future__ import annotations

import decimal
import math
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import (
    IntervalSweep,
    Override,
    Quote,
    QuotedString,
    RangeSweep,
    Transformer,
)
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

_PRIMITIVES = (str, int, float, bool)


@dataclass
class SearchSpace:
    # Param name = override key ("x", "+x", "db@pkg"), as the official plugin names them.
    distributions: dict[str, BaseDistribution] = field(default_factory=dict)
    # Exact override text of each categorical choice, aligned with the distribution's choices.
    choice_texts: dict[str, list[str]] = field(default_factory=dict)
    fixed: dict[str, str] = field(default_factory=dict)  # key -> "key=value", unchanged
    texts: dict[str, str] = field(default_factory=dict)  # param -> the grammar as written
    ranges: set[str] = field(default_factory=set)  # params written as range(): the grid leaves out the end

    def fixed_overrides(self) -> list[str]:
        return list(self.fixed.values())

    def trial_overrides(self, params: Mapping[str, Any]) -> list[str]:
        """Overrides of one trial: its space's params, then any other param a custom_search_space suggested."""
        out = []
        for name, value in params.items():
            dist = self.distributions.get(name)
            if isinstance(dist, CategoricalDistribution) and name in self.choice_texts:
                text = self.choice_texts[name][dist.to_internal_repr(value)]
            else:
                text = format_value(value)
            out.append(f"{name}={text}")
        return out

    def describe(self) -> dict[str, str]:
        return {name: str(dist) for name, dist in self.distributions.items()}


def param_overrides(params: Mapping[str, Any] | None) -> list[str]:
    """``hydra.sweeper.params`` entries as override strings (non-strings are fixed values)."""
    return [f"{k}={v if isinstance(v, str) else format_value(v)}" for k, v in (params or {}).items()]


def parse_search_space(overrides: Iterable[str], config_loader: Any = None) -> SearchSpace:
    """Later overrides of the same key win (command line after ``hydra.sweeper.params``)."""
    space = SearchSpace()
    for override in OverridesParser.create(config_loader=config_loader).parse_overrides(list(overrides)):
        name = override.get_key_element()
        for entries in (space.distributions, space.fixed, space.texts):
            entries.pop(name, None)
        space.ranges.discard(name)
        if not override.is_sweep_override():  # passed on unchanged; a bare "~key" has no value
            key = override.get_key_element()
            bare_delete = override.is_delete() and override.value() is None
            space.fixed[name] = key if bare_delete else f"{key}={override.get_value_element_as_str()}"
            continue
        space.distributions[name] = distribution_of(override, space)
        space.texts[name] = override.get_value_string()
        if isinstance(override.value(), RangeSweep) and not override.value().shuffle:
            space.ranges.add(name)
    return space


_SPACE_URL = "https://hydra.cc/docs/upgrades/1.1_to_1.2/changes_to_sweeper_config/"


def legacy_search_space(params: Mapping | None, search_space: Mapping | None) -> dict[str, BaseDistribution]:
    """Distributions of the deprecated ``hydra.sweeper.search_space``, with the official plugin's warnings.

    Args:
        params: ``hydra.sweeper.params`` (it wins over ``search_space`` when both are given).
        search_space: ``{name: {type: int|float|categorical, low, high, step, log, choices}}``.

    Returns:
        The distributions by name; {} when ``params`` is given or there is no ``search_space``.
    """
    if search_space is None:
        return {}
    if params is not None:
        warnings.warn(
            "Both hydra.sweeper.params and hydra.sweeper.search_space are configured.\n"
            f"Hydra will use hydra.sweeper.params for defining search space.\n{_SPACE_URL}",
            UserWarning, stacklevel=2,
        )
        return {}
    warnings.warn(
        "`hydra.sweeper.search_space` is deprecated and will be removed in the next major release.\n"
        f"Please configure with `hydra.sweeper.params`.\n{_SPACE_URL}",
        UserWarning, stacklevel=2,
    )
    return {str(name): distribution_from_config(spec) for name, spec in search_space.items()}


def distribution_from_config(spec: Mapping[str, Any]) -> BaseDistribution:
    """One entry of the deprecated ``search_space``: ``{type, low, high, step, log, choices}``.

    Args:
        spec: the entry; ``type`` is int, float or categorical (a string, or the official enum).

    Returns:
        The Optuna distribution.
    """
    kind = getattr(spec.get("type"), "name", spec.get("type"))
    if kind == "categorical":
        return CategoricalDistribution(list(spec["choices"]))
    if kind not in ("int", "float"):
        raise ValueError(f"search_space type {kind!r}: choose one of int, float, categorical")
    low, high, step, log = spec["low"], spec["high"], spec.get("step"), bool(spec.get("log", False))
    if kind == "int":
        return IntDistribution(int(low), int(high), log=log, step=1 if log or step is None else int(step))
    return FloatDistribution(float(low), float(high), log=log, step=None if log or step is None else float(step))


def distribution_of(override: Override, space: SearchSpace) -> BaseDistribution:
    """The Optuna distribution of one sweep override (the text of its choices goes into ``space``).

    Args:
        override: a parsed sweep override (interval, range, choice, ...).
        space: the search space it belongs to.

    Returns:
        The distribution; ValueError naming the key for one Optuna cannot take.
    """
    name = override.get_key_element()
    try:
        return _distribution(override, name, space)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"search space of {name!r} ({override.input_line}): {exc}") from exc


def _distribution(override: Override, name: str, space: SearchSpace) -> BaseDistribution:
    value = override.value()
    if isinstance(value, IntervalSweep):
        log = "log" in value.tags
        if isinstance(value.start, int) and isinstance(value.end, int):
            return IntDistribution(value.start, value.end, log=log)
        return FloatDistribution(float(value.start), float(value.end), log=log)
    if isinstance(value, RangeSweep) and not value.shuffle:
        if "log" in value.tags:
            raise ValueError(
                "range() has a step, which Optuna cannot combine with log; use tag(log, interval())"
            )
        if all(isinstance(v, int) for v in (value.start, value.stop, value.step)):
            low, high = sorted((value.start, value.stop))
            return IntDistribution(low, high, step=abs(value.step))
        low, high = sorted((float(value.start), float(value.stop)))
        return FloatDistribution(low, high, step=abs(float(value.step)))
    # choice(), a,b,c, glob(), shuffle(range()): enumerate through Hydra itself.
    choices, texts = [], []
    for item in override.sweep_iterator(transformer=Transformer.identity):
        item = Override._convert_value(item)
        if isinstance(item, _PRIMITIVES):
            choices.append(item)
            texts.append(format_value(item))
        else:  # lists/dicts are not Optuna choices: keep Hydra's text for both
            text = Transformer.str(item)
            choices.append(text)
            texts.append(text)
    if not choices:
        raise ValueError("empty choice")
    space.choice_texts[name] = texts
    return CategoricalDistribution(choices)


def format_value(value: Any) -> str:
    """Override text that Hydra parses back to exactly ``value``."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)  # shortest round-tripping form
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        for text in (value, QuotedString(text=value, quote=Quote.single).with_quotes()):
            if _parses_back(text, value):
                return text
        raise ValueError(f"cannot write {value!r} as a Hydra override value")
    return Transformer.str(value)


def _parses_back(text: str, value: Any) -> bool:
    try:
        parsed = OverridesParser.create().parse_override(f"k={text}")
    except Exception:  # noqa: BLE001 - any parse error means "quote it"
        return False
    return not parsed.is_sweep_override() and type(parsed.value()) is type(value) and parsed.value() == value


def grid_search_space(space: SearchSpace) -> dict[str, list[Any]]:
    """GridSampler needs every value listed: only choice(), range() and int intervals qualify."""
    grid: dict[str, list[Any]] = {}
    for name, dist in space.distributions.items():
        if isinstance(dist, CategoricalDistribution):
            grid[name] = list(dist.choices)
        elif isinstance(dist, IntDistribution) and not dist.log:
            end = dist.high if name in space.ranges else dist.high + 1  # range(): Hydra's, end excluded
            grid[name] = list(range(dist.low, end, dist.step))
        elif isinstance(dist, FloatDistribution) and dist.step is not None:
            low, step = decimal.Decimal(repr(dist.low)), decimal.Decimal(repr(dist.step))
            span = (decimal.Decimal(repr(dist.high)) - low) / step
            count = math.ceil(span) if name in space.ranges else int(span) + 1
            grid[name] = [float(low + i * step) for i in range(count)]
        else:
            raise ValueError(
                f"sampler 'grid' needs a finite space, but {name!r} is {dist}; "
                "use choice(...) or range(a,b,step) for it, or another sampler"
            )
    if not grid:
        raise ValueError("sampler 'grid' needs at least one choice(...)/range(...) parameter")
    return grid
