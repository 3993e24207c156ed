"""MLflow conventions: one run per trained model, explicit run ids, the whole config as params."""

from __future__ import annotations

import functools
import getpass
import json
import logging
import os
import platform
import subprocess
import sys
import traceback
from importlib import metadata
from pathlib import Path
from typing import Any

import kdexp
from kdexp.tracking.redact import redact_text
from kdexp.tracking.stores import artifact_location, check_store, ensure_experiment, open_tracking_store

log = logging.getLogger(__name__)
MAX_PARAM_LEN = 6000  # MLflow's limit on a param value
TAG_KEYS = ("data", "teacher", "student", "distill", "seed")


def flatten(node: Any, prefix: str = "") -> dict[str, str]:
    """{'a': {'b': 1}} -> {'a.b': '1'}; lists are kept whole as their JSON text."""
    if isinstance(node, dict):
        out: dict[str, str] = {}
        for key, value in node.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    text = json.dumps(node) if isinstance(node, (list, tuple)) else str(node)
    return {prefix.rstrip("."): text[:MAX_PARAM_LEN]}


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(["git", *args], cwd=Path(kdexp.__file__).parent, capture_output=True, text=True,
                              timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def source_tags() -> dict[str, str]:
    """MLflow's User and Source columns (who ran which program), the commit of the code this process loaded
    and whether tracked files differed from it."""
    tags = {"mlflow.source.name": Path(sys.argv[0]).name or "kdexp", "mlflow.source.type": "LOCAL"}
    try:
        tags["mlflow.user"] = getpass.getuser()
    except (KeyError, OSError):  # a container user without a passwd entry
        pass
    commit = _git("rev-parse", "HEAD")
    if not commit:
        return tags  # an installed package, or no git
    changes = _git("status", "--porcelain", "--untracked-files=no")
    dirty = "unknown" if changes is None else str(bool(changes)).lower()
    return {**tags, "mlflow.source.git.commit": commit, "kdexp.source.dirty": dirty}


def user_tags(tracking: dict, tags: list | None = None) -> dict[str, str]:
    """The user's own tags: ``tracking.tags`` (``+tracking.tags.note=x``; nested keys joined with dots) and
    the top-level ``tags`` list (lightning-hydra-template's ``tags=[dev,mnist]``) as one ``tags`` tag.

    Args:
        tracking: the ``tracking`` node.
        tags: the top-level ``tags`` list.

    Returns:
        MLflow tags.
    """
    out = flatten(dict(tracking.get("tags") or {}))
    if tags:
        out["tags"] = ", ".join(str(t) for t in tags)
    return out


# Read once, as the code is loaded: a long multirun must not tag its runs with commits made after it started.
SOURCE_TAGS = source_tags()
KEY_LIBRARIES = ("torch", "lightning", "optuna", "mlflow", "hydra-core", "torchmetrics", "numpy", "scipy")
REQUIREMENTS_ARTIFACT = "environment/requirements.txt"


@functools.cache
def environment() -> tuple[str, dict[str, str]]:
    """The installed distributions as a frozen requirements list (`name==version`, sorted) and the key libraries'
    versions as tags (`kdexp.lib.<name>`), read once per process: a table's numbers name what produced them."""
    versions: dict[str, str] = {}
    for dist in metadata.distributions():
        name = (dist.metadata["Name"] or "").strip()
        if name:
            versions.setdefault(name.lower().replace("_", "-"), dist.version)
    lines = [f"# python {platform.python_version()} on {platform.platform()}"]
    lines += [f"{name}=={version}" for name, version in sorted(versions.items())]
    tags = {f"kdexp.lib.{name}": versions[name] for name in KEY_LIBRARIES if name in versions}
    tags["kdexp.lib.python"] = platform.python_version()
    return "\n".join(lines) + "\n", tags


class Tracker:
    """Creates runs in one experiment of one store; everything else goes through run ids.

    Everything it sends (params, tags, error text, small text artifacts) has its secrets masked (kdexp.tracking.redact).
    `artifact_root` (``tracking.artifact_root``) is where a new experiment of a SQLite or database store keeps
    its artifacts; a tracking server (http/https) keeps them in its own artifact store instead.
    """

    def __init__(self, uri: str, experiment: str, artifact_root: str | os.PathLike | None = None,
                 tags: dict[str, str] | None = None, system_metrics: bool = False):
        self.uri = check_store(uri, "tracking.uri", "mlflow")  # a bad store: StoreError (one line), no run made
        # Normally the launching process made the store and experiment; a job started alone may be the first.
        self.client = open_tracking_store(self.uri)
        self.experiment_id = ensure_experiment(self.client, self.uri, experiment,
                                               artifact_location(self.uri, artifact_root))
        self.user_tags = dict(tags or {})
        self.system_metrics = system_metrics and _psutil()
        self._monitors: dict[str, Any] = {}

    def start(self, name: str, tags: dict[str, str], params: dict[str, str] | None = None) -> str:
        tags = {**self.user_tags, "kdexp.version": kdexp.__version__, **tags}  # kdexp's own keys win
        tags = {k: redact_text(str(v)) for k, v in tags.items()}
        requirements, library_tags = environment()
        tags.update({**SOURCE_TAGS, **library_tags})
        run = self.client.create_run(self.experiment_id, run_name=name, tags=tags)
        self.client.log_text(run.info.run_id, requirements, REQUIREMENTS_ARTIFACT)
        if params:
            self.log_params(run.info.run_id, params)
        self.monitor(run.info.run_id)
        return run.info.run_id

    def monitor(self, run_id: str) -> None:
        """MLflow's system metrics (CPU, memory, disk, network, GPU: ``system/*``) for the run's life."""
        if not self.system_metrics or run_id in self._monitors:
            return
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)  # its start/stop lines, per run

        monitor = SystemMetricsMonitor(run_id, resume_logging=True, tracking_uri=self.uri)
        monitor.start()
        self._monitors[run_id] = monitor

    def _unmonitor(self, run_id: str) -> None:
        monitor = self._monitors.pop(run_id, None)
        if monitor is not None:
            monitor.finish()

    def log_params(self, run_id: str, params: dict[str, str]) -> None:
        from mlflow.entities import Param

        items = [Param(k, redact_text(str(v))[:MAX_PARAM_LEN]) for k, v in params.items()]
        for i in range(0, len(items), 100):  # MLflow's batch limit
            self.client.log_batch(run_id, params=items[i : i + 100])

    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int = 0) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k.replace("@", "_at_"), float(v), now, step) for k, v in metrics.items()]
        for i in range(0, len(items), 1000):
            self.client.log_batch(run_id, metrics=items[i : i + 1000])

    def sink(self, run_id: str, prefix: str = ""):
        """A DistillModule metric sink: per-epoch metrics, optionally under a stage prefix."""
        return lambda metrics, epoch: self.log_metrics(run_id, {prefix + k: v for k, v in metrics.items()}, epoch)

    def log_artifact(self, run_id: str, path: str | os.PathLike, folder: str | None = None) -> None:
        """Uploads the file (into the run's artifact `folder`, None: its root); a small text file with a secret
        in it goes up masked (the file itself is kept)."""
        path = Path(path)
        masked = _masked_text(path)
        if masked is None:
            self.client.log_artifact(run_id, str(path), folder)
        else:
            self.client.log_text(run_id, masked, f"{folder}/{path.name}" if folder else path.name)

    def set_tags(self, run_id: str, tags: dict[str, Any]) -> None:
        for k, v in tags.items():
            self.client.set_tag(run_id, k, redact_text(str(v)))

    def finish(self, run_id: str, status: str = "FINISHED") -> None:
        self._unmonitor(run_id)
        self.client.set_terminated(run_id, status=status)

    def fail(self, run_id: str, exc: BaseException) -> None:
        """Record a crash: FAILED status, the error as a tag, the traceback as an artifact."""
        self._unmonitor(run_id)
        try:
            self.client.set_tag(run_id, "kdexp.error", redact_text(f"{type(exc).__name__}: {exc}")[:5000])
            self.client.log_text(run_id, redact_text("".join(traceback.format_exception(exc))), "error.txt")
        finally:
            self.client.set_terminated(run_id, status="FAILED")


def _psutil() -> bool:
    """MLflow's system metrics need psutil (not a kdexp dependency): without it, say so once and go on."""
    try:
        import psutil  # noqa: F401
    except ImportError:
        if not getattr(_psutil, "said", False):
            log.warning("tracking.system_metrics: MLflow's system metrics need psutil (pip install psutil); "
                        "runs are recorded without them")
            _psutil.said = True
        return False
    return True


TEXT_ARTIFACTS = (".yaml", ".yml", ".json", ".md", ".txt", ".csv", ".tex", ".log")


def _masked_text(path: Path, limit: int = 5_000_000) -> str | None:
    """The masked text of a small text file that holds a secret, else None (upload the file as it is)."""
    if path.suffix not in TEXT_ARTIFACTS or not path.is_file() or path.stat().st_size > limit:
        return None
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError):
        return None
    masked = redact_text(text)
    return None if masked == text else masked
