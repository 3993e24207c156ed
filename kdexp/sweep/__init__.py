"""Hyper-parameter sweeps: kdexp's own Optuna sweeper for Hydra 1.3 (``hydra/sweeper=kdexp_optuna``).

Command line (search space as sweep overrides; other overrides stay fixed for every trial)::

    kdexp-train -m hydra/sweeper=kdexp_optuna hydra.sweeper.n_trials=30 hydra.sweeper.n_jobs=2 \\
        'hydra.sweeper.objectives=[{metric:student/val_acc,direction:maximize}]' \\
        'distill.temperature=interval(1,20)' 'recipe.lr=tag(log, interval(1e-4, 1e-1))' \\
        'recipe.batch_size=choice(64,128,256)' 'trainer.max_epochs=range(10,30,10)'

YAML (e.g. a ``conf/experiment/*.yaml`` or a sweep file); a config written for Hydra's official Optuna sweeper
(``hydra/sweeper=optuna``) runs with only the name changed (docs/sweeps.md)::

    defaults:
      - override /hydra/sweeper: kdexp_optuna
      - override /hydra/sweeper/sampler: tpe      # random, cmaes, nsgaii, motpe, grid, qmc
    hydra:
      sweeper:
        storage: sqlite:///outputs/optuna.db      # null (the default): an in-memory study
        study_name: kd-temperature
        n_trials: 30
        sampler: {seed: 0, constant_liar: true}
        pruner: {name: median, n_startup_trials: 5, n_warmup_steps: 2}
        objectives: [{metric: student/val_acc, direction: maximize}]   # kdexp-train returns a dict
        params:
          distill.temperature: interval(1, 20)
          distill.alpha: range(0.1, 0.9, step=0.1)

Modules: ``engine`` (ask-and-tell loop), ``search_space`` (grammar), ``samplers`` (the sampler group),
``factories`` (samplers and pruners), ``storage`` (URLs, study lock, heartbeats), ``outcomes`` (job result ->
trial state), ``tracking``/``report`` (MLflow parent run, summary) and ``trial`` (the job-side API).
Nothing is imported here, so that Hydra's plugin scan stays fast.
"""
