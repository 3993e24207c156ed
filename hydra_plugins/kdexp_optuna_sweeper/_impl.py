"""The official hydra-optuna-sweeper's module-level API (``hydra_plugins.hydra_optuna_sweeper._impl``), for
code and tests written against it; each name is kdexp's own implementation."""

from __future__ import annotations

from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override

from kdexp.sweep.search_space import SearchSpace, distribution_from_config, distribution_of, parse_search_space

from .optuna_sweeper import KdexpOptunaSweeper as OptunaSweeperImpl

create_optuna_distribution_from_config = distribution_from_config
__all__ = ["OptunaSweeperImpl", "create_optuna_distribution_from_config", "create_optuna_distribution_from_override",
           "create_params_from_overrides"]


def create_optuna_distribution_from_override(override: Override) -> Any:
    """A sweep override's distribution; a plain override's value text."""
    if not override.is_sweep_override():
        return override.get_value_element_as_str()
    return distribution_of(override, SearchSpace())


def create_params_from_overrides(arguments: list[str]) -> tuple[dict[str, Any], dict[str, str]]:
    """(distributions, fixed values) by override key, as the official function returns them."""
    space = parse_search_space(arguments)
    fixed = {}
    for override in OverridesParser.create().parse_overrides(arguments):
        if not override.is_sweep_override():
            fixed[override.get_key_element()] = override.get_value_element_as_str()
    return space.distributions, fixed
