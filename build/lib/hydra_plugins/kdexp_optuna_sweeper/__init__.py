"""kdexp's Optuna sweeper for Hydra 1.3 (``hydra/sweeper=kdexp_optuna``).

Hydra imports every module under ``hydra_plugins`` at start-up, so these modules stay light:
the Optuna/MLflow work lives in :mod:`kdexp.sweep` and is imported only when a sweep runs.
"""
