"""What every stage of one experiment shares."""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping

from torch import nn

from kdexp.bench.matrix import settings_key
from kdexp.caching.models import ModelCache
from kdexp.caching.teacher_outputs import TeacherCacheSettings
from kdexp.config.errors import ConfigError
from kdexp.config.parse import recipe_for
from kdexp.distill import method_from_config
from kdexp.models import create_model
from kdexp.runtime import distributed
from kdexp.tracking.progress import sweep_position
from kdexp.tracking.runs import Tracker, user_tags
from kdexp.training.lifecycle import NullTracker


@dataclass
class Context:
    conf: Mapping  # the run's frozen config (kdexp.config.parse.parse_config)
    dm: Any  # a kdexp TensorDataModule, set up
    tracker: Tracker
    cache: ModelCache
    run_dir: Path
    test: dict = field(default_factory=dict)  # role -> test logits, for agreement
    timed: dict = field(default_factory=dict)  # role -> model evaluated with costs, timed with the student
    memo: dict = field(default_factory=dict)  # teacher outputs / views already loaded in this experiment
    run_tags: dict = field(default_factory=dict)  # the experiment kind's own tags on its student runs
    position: str | None = None  # "cell i/N" / "trial i/N" of a multirun, shown in progress lines
    cell: str = ""  # the run's matrix cell key
    resume_key: str = ""  # what a re-run of the same training shares: the cell, or a sweep trial's retry chain

    def checkpoints(self, name: str) -> Path:
        """Where a training named `name` (a cache key, or `student-<cell>`) keeps its per-epoch checkpoint:
        the same folder in every attempt, so that running the same command again resumes it."""
        return Path(self.conf["paths"]["cache"]) / "checkpoints" / name

    @property
    def student_checkpoints(self) -> Path | None:
        return self.checkpoints(f"student-{self.resume_key}") if self.resume_key else None

    def __post_init__(self):
        augment = bool((self.conf.get("data") or {}).get("augment"))
        TeacherCacheSettings.from_conf(self.conf.get("teacher_cache"), augment)  # fails before any training

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.dm.input_shape)

    def with_nodes(self, **nodes: Mapping) -> Context:
        """The same experiment seen with some config nodes replaced (a chain link's student, an ensemble
        member's teacher); data, tracker, caches and collected test logits are shared."""
        return replace(self, conf={**self.conf, **nodes})

    def build(self, role: str) -> nn.Module:
        node = self.conf[role]
        return create_model(node["arch"], num_classes=self.dm.num_classes, in_channels=self.dm.in_channels,
                            **model_kwargs(self.dm, node, role))

    def recipe_for(self, role: str, arch: str | None = None) -> dict:
        return recipe_for(self.conf, role, arch)

    def tags(self, role: str) -> dict[str, str]:
        """Config choices as tags, so that a benchmark is an MLflow query."""
        c = self.conf
        return {
            "kdexp.role": role, "data": c["data"]["name"], "teacher": c["teacher"]["arch"],
            "student": c["student"]["arch"], "distill": c["distill"]["name"], "seed": str(c["seed"]),
            **(c.get("tune") or {}).get("tags", {}),  # kdexp.tuned, kdexp.tune.study: a tuned matrix's cell
            **self.run_tags,
        }

    def alone_tags(self, label: str, arch: str, seed: int) -> dict[str, str]:
        """Tags of a model trained alone: shared by every experiment that reuses it."""
        return {"kdexp.role": label, "data": self.conf["data"]["name"], "arch": arch, "seed": str(seed)}

    @property
    def settings(self) -> str:
        """kdexp.settings of the student run: what every cell of one benchmark table shares."""
        return settings_key(self.conf)


def model_kwargs(dm, node: Mapping, role: str) -> dict:
    """The constructor arguments of the `role` node's model: its kwargs; for text data also the vocabulary and
    sequence length, and `hf_config`. A model of the other modality is refused here, before any training."""
    from kdexp.models.text import HF_FAMILIES, TEXT_MODELS

    kwargs = dict(node.get("kwargs") or {})
    family = node["arch"].partition(":")[0]
    text_data = hasattr(dm, "model_kwargs")
    if text_data != (family in TEXT_MODELS):
        allowed = ", ".join(f"{m}" for m in TEXT_MODELS) + ", hf:<hub id or folder>"
        raise ConfigError(f"{role}.arch={node['arch']!r} does not take {'text' if text_data else 'images'} "
                          f"(data={dm.name}); " + (f"text models: {allowed}" if text_data else
                                                   "choose an image model (kdexp.models.list_models())"))
    if text_data:
        kwargs.update(dm.model_kwargs())
        if family in HF_FAMILIES:
            kwargs["hf_config"] = dict(node.get("hf_config") or {})
    return kwargs


def make_context(conf: Mapping, run_dir: str | Path, run_tags: dict[str, str] | None = None,
                 cell: str = "") -> Context:
    from kdexp.data import create_datamodule

    quiet_lightning()
    announce_processes(conf["trainer"])
    dm = create_datamodule(**conf["data"], seed=conf["seed"])
    dm.setup()  # bad roots and corrupt files fail here, before any training
    if distributed.is_rank_zero():  # only rank 0 records: MLflow runs, artifacts, summaries
        tracking = conf["tracking"]
        tracker = Tracker(tracking["uri"], tracking["experiment"], artifact_root=tracking.get("artifact_root"),
                          tags=user_tags(tracking, conf.get("tags")),
                          system_metrics=tracking.get("system_metrics", False))
    else:
        tracker = NullTracker()
    cache = ModelCache(Path(conf["paths"]["cache"]) / "models")
    return Context(conf, dm, tracker, cache, Path(run_dir), run_tags=dict(run_tags or {}),
                   position=sweep_position(conf), cell=cell, resume_key=resume_key(conf, cell))


def resume_key(conf: Mapping, cell: str) -> str:
    """The cell key; in a sweep trial, the study and the first trial of its retry chain with the config less
    its trial identity, so that a trial asked again after a kill finds the killed one's checkpoints."""
    from kdexp.training.lifecycle import in_trial

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


def planned_processes(trainer: Mapping) -> int:
    """Processes the `trainer:` node will train with under Lightning's script launcher (strategy=ddp):
    devices x num_nodes; 1 for any other strategy, or for devices=auto (count unknown before the fit)."""
    strategy = str(trainer.get("strategy", "auto"))
    if not strategy.startswith("ddp") or any(k in strategy for k in ("spawn", "fork", "notebook")):
        return 1
    devices = trainer.get("devices", 1)
    count = len(devices) if isinstance(devices, (list, tuple)) else int(devices) if str(devices).isdigit() else 1
    return max(count, 1) * int(trainer.get("num_nodes", 1))


def announce_processes(trainer: Mapping) -> None:
    """Tell rank 0 before its first fit that it is one of several processes (Lightning exports WORLD_SIZE
    only once that fit launches the others): the model cache must then take its DDP path from the start,
    or rank 0 would train a teacher under the cache lock while the other ranks wait for it (issue 13)."""
    planned = planned_processes(trainer)
    if planned > 1:
        os.environ.setdefault("WORLD_SIZE", str(planned))


def build_method(ctx: Context, student: nn.Module, teacher: nn.Module):
    """The configured method, built for this (student, teacher) pair: adapters depend on both."""
    method = method_from_config(ctx.conf["distill"])
    method.build(student.feature_shapes(ctx.input_shape), teacher.feature_shapes(ctx.input_shape),
                 ctx.dm.num_classes, ctx.dm.num_train)
    return method


def quiet_lightning() -> None:
    """Keep Lightning's start-up banners out of the summary; warnings still show."""
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode.*")  # the frozen teacher, on purpose
    warnings.filterwarnings("ignore", message=r".*LeafSpec.*")
    # DDP: epoch metrics are already all-reduced by EpochSums; Lightning's sync_dist advice does not apply
    warnings.filterwarnings("ignore", message=r".*sync_dist=True.*")
