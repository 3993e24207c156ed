"""Job-side API of the kdexp Optuna sweeper.

The sweeper passes the trial context as overrides of the ``optuna_trial`` node (storage URL,
study name, trial number/id, MLflow parent run id). Everything else goes through the storage,
so this works in-process, in joblib workers and on SLURM nodes alike::

    trial = trial_from_cfg(cfg)                      # None outside a kdexp_optuna sweep
    with mlflow.start_run(tags=child_run_tags(cfg)):
        callbacks = [PruningCallback(trial, "student/val_acc")] if trial else []
        try:
            trainer.fit(...)
        except Exception as exc:
            if is_pruned_error(exc):
                end_pruned_run()                      # KILLED + kdexp.trial_state=PRUNED
            raise                                     # the sweeper records PRUNED / FAIL
        return {"student/val_acc": ...}
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import optuna
from omegaconf import OmegaConf

from .factories import build_pruner
from .storage import job_url, rdb_storage

PRUNER_ATTR = "kdexp.pruner"
TRIAL_STATE_TAG = "kdexp.trial_state"
RUN_ID_ATTR = "mlflow_run_id"


def trial_context(cfg: Mapping) -> dict[str, Any] | None:
    """The ``optuna_trial`` node (of a DictConfig or a plain dict) as a dict, or None when this job
    is not an Optuna trial."""
    node = cfg.get("optuna_trial")
    if node is None:
        return None
    ctx = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else dict(node)
    return ctx if ctx.get("study_name") and ctx.get("trial_id") is not None else None


def trial_from_cfg(cfg: Mapping) -> optuna.Trial | None:
    """Rebuild the running trial from the storage (with the study's pruner), or None: outside a sweep, or in a
    sweep of an in-memory study (storage null), which no job can reach."""
    ctx = trial_context(cfg)
    if ctx is None or not ctx.get("storage"):
        return None
    # A cheap sampler: the job never samples, the sweeper did that at ask() time.
    study = optuna.load_study(
        study_name=ctx["study_name"],
        storage=rdb_storage(job_url(ctx["storage"])),
        sampler=optuna.samplers.RandomSampler(),
    )
    study.pruner = build_pruner(study.user_attrs.get(PRUNER_ATTR))
    return optuna.trial.Trial(study, int(ctx["trial_id"]))


def resume_origin(cfg: Mapping) -> tuple[str, int] | None:
    """(study name, number of the first trial of its retry chain) of a sweep job, or None outside a sweep:
    a trial asked again after its sweeper was killed resumes that trial's training from its checkpoint."""
    trial = trial_from_cfg(cfg)
    if trial is None:
        return None
    frozen = trial.study._storage.get_trial(trial._trial_id)
    with warnings.catch_warnings():  # stable since Optuna 2.8, still flagged experimental
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        history = optuna.storages.RetryFailedTrialCallback.retry_history(frozen)
    return trial.study.study_name, (history[0] if history else frozen.number)


def is_pruned_error(exc: BaseException | None) -> bool:
    """True for optuna.TrialPruned, also when wrapped (``raise ... from``) by a caller."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, optuna.TrialPruned) or type(exc).__name__ == "TrialPruned":
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


def child_run_tags(cfg: Mapping) -> dict[str, str]:
    """Tags that nest a trial's MLflow run under the sweep's parent run ({} outside a sweep)."""
    ctx = trial_context(cfg)
    if ctx is None:
        return {}
    tags = {"optuna.study_name": str(ctx["study_name"]), "optuna.trial_number": str(ctx.get("trial_number"))}
    if ctx.get("parent_run_id"):
        tags["mlflow.parentRunId"] = str(ctx["parent_run_id"])
    return tags


def trial_run_name(cfg: Mapping, name: str) -> str:
    """``trial-007 <name>``: the trial's number first, so that every trial's run has its own name; 1-based like
    kdexp's progress lines ("trial 7/20"), i.e. Optuna's 0-based trial number + 1."""
    ctx = trial_context(cfg)
    return name if ctx is None else f"trial-{int(ctx['trial_number']) + 1:03d} {name}"


def link_run(cfg: Mapping, run_id: str) -> None:
    """Store the trial's MLflow run id in its user attributes (``mlflow_run_id``), for dashboards and scripts
    that go from a trial to its run. Nothing for an in-memory study (no job reaches it) or outside a sweep."""
    trial = trial_from_cfg(cfg)
    if trial is not None:
        trial.set_user_attr(RUN_ID_ATTR, run_id)


def end_pruned_run(run_id: str | None = None, client: Any = None) -> None:
    """End a pruned trial's run as KILLED with tag kdexp.trial_state=PRUNED.

    Without ``run_id`` it ends the active run of the fluent API (``mlflow.start_run``).
    """
    import mlflow

    if run_id is None:
        if mlflow.active_run() is None:
            return
        mlflow.set_tag(TRIAL_STATE_TAG, "PRUNED")
        mlflow.end_run(status="KILLED")
        return
    client = client or mlflow.MlflowClient()
    client.set_tag(run_id, TRIAL_STATE_TAG, "PRUNED")
    client.set_terminated(run_id, status="KILLED")


def __getattr__(name: str) -> Any:
    # PruningCallback needs lightning (seconds to import): load it only when asked for.
    if name == "PruningCallback":
        from .lightning_pruning import PruningCallback

        return PruningCallback
    raise AttributeError(name)
