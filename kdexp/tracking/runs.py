"""MLflow conventions: one run per trained model, explicit run ids, the whole config as params."""

from __future__ import annotations

import json
import os
import subprocess
import traceback
from pathlib import Path
from typing import Any

import kdexp
from kdexp.tracking.redact import redact_text
from kdexp.tracking.stores import artifact_location, check_store, ensure_experiment, open_tracking_store

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
    """The commit of the code this process loaded and whether tracked files differed from it."""
    commit = _git("rev-parse", "HEAD")
    if not commit:
        return {}  # an installed package, or no git
    changes = _git("status", "--porcelain", "--untracked-files=no")
    dirty = "unknown" if changes is None else str(bool(changes)).lower()
    return {"mlflow.source.git.commit": commit, "kdexp.source.dirty": dirty}


# Read once, as the code is loaded: a long multirun must not tag its runs with commits made after it started.
SOURCE_TAGS = source_tags()


class Tracker:
    """Creates runs in one experiment of one store; everything else goes through run ids.

    Everything it sends (params, tags, error text, small text artifacts) has its secrets masked (kdexp.tracking.redact).
    `artifact_root` (``tracking.artifact_root``) is where a new experiment of a SQLite or database store keeps
    its artifacts; a tracking server (http/https) keeps them in its own artifact store instead.
    """

    def __init__(self, uri: str, experiment: str, artifact_root: str | os.PathLike | None = None):
        self.uri = check_store(uri, "tracking.uri", "mlflow")  # a bad store: StoreError (one line), no run made
        # Normally the launching process made the store and experiment; a job started alone may be the first.
        self.client = open_tracking_store(self.uri)
        self.experiment_id = ensure_experiment(self.client, self.uri, experiment,
                                               artifact_location(self.uri, artifact_root))

    def start(self, name: str, tags: dict[str, str], params: dict[str, str] | None = None) -> str:
        tags = {"kdexp.version": kdexp.__version__, **{k: redact_text(str(v)) for k, v in tags.items()}}
        tags.update(SOURCE_TAGS)
        run = self.client.create_run(self.experiment_id, run_name=name, tags=tags)
        if params:
            self.log_params(run.info.run_id, params)
        return run.info.run_id

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

    def log_artifact(self, run_id: str, path: str | os.PathLike) -> None:
        """Uploads the file; a small text file with a secret in it goes up masked (the file itself is kept)."""
        path = Path(path)
        masked = _masked_text(path)
        if masked is None:
            self.client.log_artifact(run_id, str(path))
        else:
            self.client.log_text(run_id, masked, path.name)

    def set_tags(self, run_id: str, tags: dict[str, Any]) -> None:
        for k, v in tags.items():
            self.client.set_tag(run_id, k, redact_text(str(v)))

    def finish(self, run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(run_id, status=status)

    def fail(self, run_id: str, exc: BaseException) -> None:
        """Record a crash: FAILED status, the error as a tag, the traceback as an artifact."""
        try:
            self.client.set_tag(run_id, "kdexp.error", redact_text(f"{type(exc).__name__}: {exc}")[:5000])
            self.client.log_text(run_id, redact_text("".join(traceback.format_exception(exc))), "error.txt")
        finally:
            self.client.set_terminated(run_id, status="FAILED")


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
