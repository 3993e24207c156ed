"""The sweep's parent MLflow run: params at start, results and Optuna plots at the end.

It goes through ``MlflowClient`` and never the fluent API, because with Hydra's basic launcher
the jobs run in this process and open their own (child) runs with ``mlflow.start_run``.
MLflow trouble is logged and never stops the sweep: the Optuna storage is the record.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import optuna
from omegaconf import DictConfig, OmegaConf

from kdexp.tracking.redact import redact_text
from kdexp.tracking.stores import (
    artifact_location,
    ensure_experiment,
    normalize_uri,
    open_tracking_store,
    sqlite_file,
)

from .report import best_summary, state_counts
from .storage import absolute_sqlite_url

log = logging.getLogger(__name__)
PARENT_RUN_ATTR = "kdexp.mlflow_parent_run_id"


def tracking_target(app_config: DictConfig) -> tuple[str | None, str]:
    """URI/experiment from the app's ``tracking`` node, else MLFLOW_TRACKING_URI / MLflow's default.

    The sweeper usually creates the experiment, before any job does: see `experiment_artifacts`.
    """
    uri = OmegaConf.select(app_config, "tracking.uri", default=None) or os.environ.get("MLFLOW_TRACKING_URI")
    uri = normalize_uri(uri)
    experiment = (
        OmegaConf.select(app_config, "tracking.experiment", default=None)
        or os.environ.get("MLFLOW_EXPERIMENT_NAME")
        or "kdexp"
    )
    if uri and sqlite_file(uri):
        uri = absolute_sqlite_url(uri)
        sqlite_file(uri).parent.mkdir(parents=True, exist_ok=True)
    return uri, str(experiment)


class ParentRun:
    def __init__(self, app_config: DictConfig):
        self.app_config = app_config
        self.uri, self.experiment = tracking_target(app_config)
        self.client = open_tracking_store(self.uri)  # a new store's tables: one process at a time
        self.run_id: str | None = None

    def open(self, study: optuna.Study, params: Mapping[str, str]) -> str | None:
        """Reopen the study's parent run (resume, second worker) or create it."""
        try:
            self.run_id = self._reusable_run(study) or self._create_run(study)
            self._log_new_params(params)
        except Exception as exc:  # noqa: BLE001
            log.warning("MLflow parent run unavailable (%s): the sweep goes on without it", exc)
            self.run_id = None
        return self.run_id

    def finish(self, study: optuna.Study, metrics: Sequence[str], status: str) -> None:
        if self.run_id is None:
            return
        from mlflow.entities import Metric

        try:
            counts = state_counts(study)
            best = best_summary(study, metrics)
            step = counts["trials_total"]
            values = {k: v for k, v in counts.items() if k != "trials_running"}
            if "best_value" in best:
                values.update(best_value=best["best_value"], best_trial=best["best_trial"])
                for name, value in best["best_params"].items():  # tags: params cannot change on resume
                    self.client.set_tag(self.run_id, mlflow_key(f"best_param.{name}"), str(value))
            if "pareto_front_size" in best:
                values["pareto_front_size"] = best["pareto_front_size"]
                values.update(
                    {mlflow_key(f"best/{m}"): e["value"] for m, e in best["best_per_objective"].items()}
                )
            now = _now_ms()
            self.client.log_batch(
                self.run_id, metrics=[Metric(k, float(v), now, step) for k, v in values.items()]
            )
            with tempfile.TemporaryDirectory() as tmp:
                (Path(tmp) / "best.json").write_text(json.dumps(best, indent=2, default=str))
                self.client.log_artifact(self.run_id, str(Path(tmp) / "best.json"), "optuna")
                for path in write_plots(study, metrics, Path(tmp)):
                    self.client.log_artifact(self.run_id, str(path), "optuna")
            self.client.set_terminated(self.run_id, status=status)
        except Exception as exc:  # noqa: BLE001
            log.warning("could not finish MLflow parent run %s: %s", self.run_id, exc)

    def _reusable_run(self, study: optuna.Study) -> str | None:
        run_id = study.user_attrs.get(PARENT_RUN_ATTR)
        if not run_id:
            return None
        try:
            run = self.client.get_run(run_id)
        except Exception:  # noqa: BLE001 - other tracking server, or deleted
            return None
        experiment = self.client.get_experiment_by_name(self.experiment)
        same_experiment = experiment is not None and run.info.experiment_id == experiment.experiment_id
        if run.info.lifecycle_stage != "active" or not same_experiment:
            return None
        self.client.update_run(run_id, status="RUNNING")
        log.info("MLflow: resuming parent run %s", run_id)
        return run_id

    def _create_run(self, study: optuna.Study) -> str:
        location = experiment_artifacts(self.app_config, self.uri)
        experiment_id = ensure_experiment(self.client, self.uri, self.experiment, location)
        tags = {"kdexp.role": "sweep", "optuna.study_name": study.study_name}
        run = self.client.create_run(experiment_id, run_name=f"sweep-{study.study_name}", tags=tags)
        study.set_user_attr(PARENT_RUN_ATTR, run.info.run_id)
        log.info("MLflow: parent run %s in experiment %r (%s)", run.info.run_id, self.experiment,
                 redact_text(str(self.uri)))
        return run.info.run_id

    def _log_new_params(self, params: Mapping[str, str]) -> None:
        from mlflow.entities import Param

        params = {mlflow_key(k): v for k, v in params.items()}
        existing = self.client.get_run(self.run_id).data.params
        new = [Param(k, v) for k, v in params.items() if k not in existing]
        if new:
            self.client.log_batch(self.run_id, params=new)
        for key, value in params.items():  # MLflow params are immutable: record changes as tags
            if key in existing and existing[key] != value:
                self.client.set_tag(self.run_id, f"changed.{key}", value)


def experiment_artifacts(app_config: DictConfig, uri: str | None) -> str | None:
    """Where a new experiment keeps its artifacts, the same rule as kdexp.tracking.runs.Tracker: the app's
    ``tracking.artifact_root`` (kdexp: ``${paths.root}/mlartifacts``), else beside a SQLite store; None for a
    tracking server (its own artifact store) or when neither is known (MLflow's default)."""
    root = OmegaConf.select(app_config, "tracking.artifact_root", default=None)
    if not root and uri and sqlite_file(uri):
        root = sqlite_file(uri).parent / "mlartifacts"
    return artifact_location(uri, root)


def mlflow_key(key: str) -> str:
    """MLflow keys allow letters, digits and _-./ and space: Hydra keys may hold @ or +."""
    return re.sub(r"[^\w\-./ ]", "_", key)


def _now_ms() -> int:
    import time

    return int(time.time() * 1000)


def write_plots(study: optuna.Study, metrics: Sequence[str], out_dir: Path) -> list[Path]:
    """Optimization history, param importances and slice/contour plots, as PNG (matplotlib)
    or HTML (plotly); none, with a note, when neither is installed."""
    backend = _plot_backend()
    if backend is None:
        log.info("no Optuna plots: install matplotlib or plotly (pip install 'kdexp[plots]')")
        return []
    vis, ext = backend
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if not complete:
        return []
    n_params = len({name for t in complete for name in t.params})
    paths = []
    single = len(metrics) == 1
    for i, metric in enumerate(metrics):
        suffix = "" if single else f"_{i}"
        args = {"target": None if single else (lambda t, i=i: t.values[i]), "target_name": metric}
        plots: dict[str, Any] = {"optimization_history": vis.plot_optimization_history}
        if n_params >= 1:
            plots["slice"] = vis.plot_slice
        if 2 <= n_params <= 4:  # a contour grid beyond 4 params is unreadable
            plots["contour"] = vis.plot_contour
        if n_params >= 2 and len(complete) >= 3:
            plots["param_importances"] = vis.plot_param_importances
        for name, make in plots.items():
            path = out_dir / f"{name}{suffix}.{ext}"
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # Optuna's ExperimentalWarning for matplotlib plots
                    _save(make(study, **args), path)
                paths.append(path)
            except Exception as exc:  # noqa: BLE001
                log.info("skipped plot %s: %s", path.name, exc)
    return paths


def _plot_backend():
    try:
        import matplotlib

        matplotlib.use("Agg")  # the sweeper may run headless (cluster login node)
        from optuna.visualization import matplotlib as vis

        return vis, "png"
    except ImportError:
        pass
    try:
        import plotly  # noqa: F401
        from optuna import visualization as vis

        return vis, "html"
    except ImportError:
        return None


def _save(figure: Any, path: Path) -> None:
    if hasattr(figure, "write_html"):  # plotly
        figure.write_html(str(path))
        return
    import matplotlib.pyplot as plt
    import numpy as np

    fig = np.ravel(figure)[0].figure  # a single Axes or an array of them
    fig.savefig(path, bbox_inches="tight", dpi=90)
    plt.close(fig)
