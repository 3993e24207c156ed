"""Hydra entry point of the kdexp Optuna sweeper; the loop itself is kdexp.sweep.engine."""

from __future__ import annotations

import sys
from typing import Any

from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

from .config import KdexpOptunaSweeperConf  # noqa: F401  (registers hydra/sweeper=kdexp_optuna)


class KdexpOptunaSweeper(Sweeper):
    def __init__(self, **settings: Any) -> None:
        # Hydra passes nested nodes as DictConfig/ListConfig; the engine wants plain containers.
        self.settings = {
            k: OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v
            for k, v in settings.items()
        }
        self.hydra_context: HydraContext | None = None
        self.config: DictConfig | None = None
        self.launcher = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        from hydra.core.plugins import Plugins

        self.hydra_context = hydra_context
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def _process_searchspace_config(self) -> None:
        """The official plugin's check of params/search_space (its warnings), without a sweep."""
        from kdexp.sweep.search_space import legacy_search_space

        legacy_search_space(self.settings.get("params"), self.settings.get("search_space"))

    def sweep(self, arguments: list[str]) -> None:
        """Runs the study; returns None, as the official plugin does (the results file is the outcome)."""
        from kdexp.config.errors import ConfigError
        from kdexp.sweep.engine import OptunaSweep
        from kdexp.tracking.stores import StoreError

        assert self.hydra_context is not None and self.config is not None and self.launcher is not None
        try:
            OptunaSweep(self.settings, self, self.config, self.hydra_context.config_loader).run(arguments)
        except (StoreError, ConfigError) as exc:  # bad input, not a bug: one line and exit 2, as kdexp-train does
            print(f"kdexp_optuna: error: {exc}", file=sys.stderr)
            sys.exit(2)
