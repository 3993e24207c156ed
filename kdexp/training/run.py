"""One experiment's place in the store, whatever its data (images, environments): `RunIdentity` (its frozen
config, tracker, model cache, run folder and the keys that name its runs) and the recording that needs no
data: cached-or-train, checkpoint folders, and the config / metrics / summary / weights files of a run."""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from omegaconf import OmegaConf
from torch import nn

from kdexp.caching.models import ModelCache, load_weights
from kdexp.config.parse import thaw
from kdexp.runtime import distributed
from kdexp.tracking.progress import sweep_position
from kdexp.tracking.redact import redact_config
from kdexp.tracking.runs import Tracker, user_tags

log = logging.getLogger("kdexp")


@dataclass(frozen=True)
class RunIdentity:
    """Who an experiment's runs are and where they record; shared, unchanged, by all of its stages."""

    conf: Mapping  # the run's frozen config (kdexp.config.parse.parse_config)
    tracker: Tracker  # a NullTracker on DDP ranks > 0
    cache: ModelCache
    folder: Path  # the run's output folder (config.yaml, metrics.json, summary.md, weights)
    cell: str = ""  # the run's matrix cell key
    resume_key: str = ""  # what a re-run of the same training shares: the cell, or a sweep trial's retry chain
    position: str | None = None  # "cell i/N" / "trial i/N" of a multirun, shown in progress lines
    tags: Mapping[str, str] = field(default_factory=dict)  # the experiment kind's own tags on its student runs

    def checkpoints(self, name: str) -> Path:
        """Where a training named `name` (a cache key, or `student-<cell>`) keeps its per-epoch checkpoint:
        the same folder in every attempt, so that running the same command again resumes it."""
        return Path(self.conf["paths"]["cache"]) / "checkpoints" / name

    @property
    def student_checkpoints(self) -> Path | None:
        return self.checkpoints(f"student-{self.resume_key}") if self.resume_key else None

    def with_tags(self, tags: Mapping[str, str]) -> RunIdentity:
        return replace(self, tags={**self.tags, **tags})


class NullTracker:
    """The tracker of DDP ranks > 0: they train with rank 0 but record nothing (rank 0 writes every run)."""

    client, uri, experiment_id = None, "", ""

    def start(self, name: str, tags: Mapping, params: Mapping | None = None) -> str:
        return "not-recorded-on-this-rank"

    def sink(self, run_id: str, prefix: str = ""):
        return lambda metrics, epoch: None

    def _nothing(self, *args: Any, **kwargs: Any) -> None:
        return None

    log_params = log_metrics = log_artifact = set_tags = finish = fail = monitor = _nothing


def open_run(conf: Mapping, run_dir: str | Path, tags: Mapping[str, str] | None = None,
             cell: str = "") -> RunIdentity:
    """The run's identity and its store: only rank 0 records (MLflow runs, artifacts, summaries).

    Args:
        conf: the run's frozen config (its `tracking` and `paths` nodes are read here).
        run_dir: the run's output folder.
        tags: the experiment kind's own tags on its student runs.
        cell: the run's matrix cell key.

    Returns:
        The RunIdentity, with its tracker (a NullTracker on ranks > 0) and model cache.
    """
    if distributed.is_rank_zero():
        tracking = conf["tracking"]
        tracker = Tracker(tracking["uri"], tracking["experiment"], artifact_root=tracking.get("artifact_root"),
                          tags=user_tags(tracking, conf.get("tags")),
                          system_metrics=tracking.get("system_metrics", False))
    else:
        tracker = NullTracker()
    cache = ModelCache(Path(conf["paths"]["cache"]) / "models")
    return RunIdentity(conf, tracker, cache, Path(run_dir), cell=cell, resume_key=resume_key(conf, cell),
                       position=sweep_position(conf), tags=dict(tags or {}))


def in_trial(conf: Mapping) -> bool:
    """Whether this run is a trial of kdexp's Optuna sweeper (its `optuna_trial` node is set)."""
    return bool((conf.get("optuna_trial") or {}).get("study_name"))


def resume_key(conf: Mapping, cell: str) -> str:
    """The cell key; in a sweep trial, the study and the first trial of its retry chain with the config less
    its trial identity, so that a trial asked again after a kill finds the killed one's checkpoints."""
    if not cell or not in_trial(conf):
        return cell
    from kdexp.bench.matrix import cell_key
    from kdexp.caching.fingerprint import fingerprint
    from kdexp.sweep.trial import resume_origin

    origin = resume_origin(conf)
    if origin is None:  # a trial of an in-memory study: nothing to resume from
        return cell
    study, origin = origin
    view = {k: v for k, v in conf.items() if k != "optuna_trial"}
    return fingerprint({"what": "trial-resume", "cell": cell_key(view), "study": study, "trial": origin})


def cached_model(run: RunIdentity, key: str, train: Callable[[], tuple[nn.Module, dict]],
                 build: Callable[[], nn.Module], what: str) -> tuple[nn.Module, dict]:
    """A model from the model cache, or trained and stored on a miss. Under DDP every rank trains and rank 0
    publishes (no lock is held across the training's collectives).

    Args:
        run: the experiment's identity (its model cache and checkpoint folders).
        key: the cache key (a fingerprint of everything that defines the model).
        train: trains the model on a miss: () -> (model, meta), meta with the run id that trained it.
        build: an untrained model of the same architecture, to load cached weights into.
        what: the model in log lines, e.g. "teacher cnn_medium".

    Returns:
        (model, meta + key + cached).
    """
    entry, fresh = run.cache.get_or_create_distributed(key, train)
    drop_checkpoints(run.checkpoints(key))  # the entry is what lasts now
    if fresh is not None:
        return fresh, {**entry.meta, "key": key, "cached": False}
    log.info("reusing cached %s (cache key %s, run %s)", what, key, entry.meta.get("run_id"))
    model = load_weights(build(), entry.weights, f"cached {what} {key}")
    return model, {**entry.meta, "key": key, "cached": True}


def resuming(ckpt_dir: Path | None) -> bool:
    """Whether a killed attempt of this training left a checkpoint (in any of its stages' folders)."""
    return ckpt_dir is not None and ckpt_dir.is_dir() and any(ckpt_dir.rglob("last.ckpt"))


def drop_checkpoints(ckpt_dir: Path | None) -> None:
    """The policy once a training's result is kept (a cache entry, a FINISHED run): its checkpoints go."""
    if ckpt_dir is not None and distributed.is_rank_zero():
        shutil.rmtree(ckpt_dir, ignore_errors=True)


def save_weights(run: RunIdentity, model: nn.Module, name: str) -> Path:
    """The model's weights in the run folder.

    Args:
        run: the experiment's identity (its folder).
        model: the model whose state_dict is saved.
        name: the file name, e.g. "student.pt".

    Returns:
        The file's path.
    """
    path = run.folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return path


def log_config(run: RunIdentity, run_id: str, conf: Mapping) -> None:
    """`conf`, secrets redacted, as the run's config.yaml artifact (rank 0).

    Args:
        run: the experiment's identity (tracker, folder).
        run_id: the run the file is logged to.
        conf: what the run was configured with (a kind that reads only some nodes gives those).
    """
    if not distributed.is_rank_zero():
        return
    run.folder.mkdir(parents=True, exist_ok=True)
    (run.folder / "config.yaml").write_text(OmegaConf.to_yaml(thaw(redact_config(thaw(conf)))))
    run.tracker.log_artifact(run_id, run.folder / "config.yaml")


def write_summary(run: RunIdentity, run_id: str, metrics: Mapping[str, float], table: str,
                  model: nn.Module) -> None:
    """metrics.json, summary.md and, with tracking.log_checkpoints, the reported model's weights as
    student.pt: written to the run folder and logged as artifacts; the table is printed (rank 0).

    Args:
        run: the experiment's identity (tracker, folder, `tracking:` switches).
        run_id: the run the files are logged to.
        metrics: every metric of the run.
        table: the summary, in markdown.
        model: the reported model.
    """
    if not distributed.is_rank_zero():
        return
    run.folder.mkdir(parents=True, exist_ok=True)
    (run.folder / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))
    (run.folder / "summary.md").write_text(table + "\n")
    for name in ("metrics.json", "summary.md"):
        run.tracker.log_artifact(run_id, run.folder / name)
    if run.conf["tracking"].get("log_checkpoints", True):
        run.tracker.log_artifact(run_id, save_weights(run, model, "student.pt"))
    print(table, flush=True)


def log_table(run: RunIdentity, run_id: str, table: str) -> None:
    """An experiment kind's own table (per link / generation / peer): printed and logged as variant.md (rank 0).

    Args:
        run: the experiment's identity (tracker, folder).
        run_id: the run the table is logged to.
        table: the table, in markdown.
    """
    if not distributed.is_rank_zero():
        return
    (run.folder / "variant.md").write_text(table + "\n")
    run.tracker.log_artifact(run_id, run.folder / "variant.md")
    print(table, flush=True)
