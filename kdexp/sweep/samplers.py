"""The ``hydra/sweeper/sampler`` group of kdexp_optuna: the official plugin's seven choices (an unknown one, on the
command line or in a YAML file, is one line from kdexp.config.compose_errors)."""

from __future__ import annotations

from typing import Any

# The hydra/sweeper/sampler group: each sampler's constructor arguments, as in the official plugin's group.
# null = the installed Optuna's own default (arguments left null, or at that default, are not passed, so the
# ones Optuna deprecated do not warn). Plain dicts, not dataclasses: any other argument of the class may be
# added in YAML (gamma, weights, constraints_func, ...); every key is checked against the class's signature.
_TPE = {
    "seed": None, "n_startup_trials": 10, "n_ei_candidates": 24, "multivariate": None, "group": None,
    # Trials running at once (n_jobs > 1, e.g. 8 on a cluster) count as bad ones, so a batch spreads out.
    # null: Optuna's default (true since Optuna 5).
    "constant_liar": None,
    # Deprecated by Optuna 4.3-4.9 (null: not passed): consider_prior, prior_weight, consider_magic_clip,
    # consider_endpoints, warn_independent_sampling.
    "consider_prior": None, "prior_weight": None, "consider_magic_clip": None, "consider_endpoints": None,
    "warn_independent_sampling": None,
}
SAMPLERS: dict[str, dict[str, Any]] = {
    "tpe": {"_target_": "optuna.samplers.TPESampler", **_TPE},
    "random": {"_target_": "optuna.samplers.RandomSampler", "seed": None},
    "cmaes": {  # needs the cmaes package
        "_target_": "optuna.samplers.CmaEsSampler", "seed": None, "x0": None, "sigma0": None,
        "n_startup_trials": None, "independent_sampler": None, "warn_independent_sampling": None,
        "consider_pruned_trials": None, "restart_strategy": None, "popsize": None, "inc_popsize": None,
        "use_separable_cma": None, "with_margin": None, "lr_adapt": None, "source_trials": None,
    },
    "nsgaii": {
        "_target_": "optuna.samplers.NSGAIISampler", "seed": None, "population_size": 50, "mutation_prob": None,
        "crossover_prob": 0.9, "swapping_prob": 0.5, "constraints_func": None,
    },
    # MOTPESampler was folded into TPESampler (Optuna 3), which handles several objectives itself.
    "motpe": {"_target_": "optuna.samplers.TPESampler", **_TPE},
    # search_space is filled at run time from the params (every value listed: choice() and range()).
    "grid": {"_target_": "optuna.samplers.GridSampler", "_partial_": True, "seed": None},
    "qmc": {
        "_target_": "optuna.samplers.QMCSampler", "seed": None, "qmc_type": "sobol", "scramble": False,
        "independent_sampler": None, "warn_asynchronous_seeding": None, "warn_independent_sampling": None,
    },
}

