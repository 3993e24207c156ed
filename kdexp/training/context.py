"""What every stage of one image experiment shares: its run identity and its data."""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping

from torch import nn

from kdexp.bench.matrix import settings_key
from kdexp.caching.teacher_outputs import TeacherCacheSettings
from kdexp.config.errors import ConfigError
from kdexp.config.parse import recipe_for
from kdexp.distill import method_from_config
from kdexp.models import create_model
from kdexp.training.run import RunIdentity, open_run


@dataclass
class Context:
    """An image experiment: its run identity (config, tracker, caches, run folder, names) and its data."""

    run: RunIdentity
    dm: Any  # a kdexp TensorDataModule, set up
    test: dict = field(default_factory=dict)  # role -> test logits, for agreement
    timed: dict = field(default_factory=dict)  # role -> model evaluated with costs, timed with the student
    memo: dict = field(default_factory=dict)  # teacher outputs / views already loaded in this experiment

    def __post_init__(self):
        augment = bool((self.conf.get("data") or {}).get("augment"))
        TeacherCacheSettings.from_conf(self.conf.get("teacher_cache"), augment)  # fails before any training

    @property
    def conf(self) -> Mapping:
        """The run's frozen config (kdexp.config.parse.parse_config)."""
        return self.run.conf

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.dm.input_shape)

    def with_nodes(self, **nodes: Mapping) -> Context:
        """The same experiment seen with some config nodes replaced (a chain link's student, an ensemble
        member's teacher); data, tracker, caches and collected test logits are shared."""
        return replace(self, run=replace(self.run, conf={**self.conf, **nodes}))

    def with_tags(self, tags: Mapping[str, str]) -> Context:
        """The same experiment with more of the kind's own tags on its student run."""
        return replace(self, run=self.run.with_tags(tags))

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
            **self.run.tags,
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
        kwargs.update(dm.model_kwargs(role))
        if family in HF_FAMILIES:
            kwargs["hf_config"] = dict(node.get("hf_config") or {})
    return kwargs


def make_context(conf: Mapping, run_dir: str | Path, run_tags: dict[str, str] | None = None,
                 cell: str = "") -> Context:
    """An image experiment's context: its data set up (bad roots and corrupt files fail here, before any
    training), then its run identity (kdexp.training.run.open_run).

    Args:
        conf: the run's frozen config.
        run_dir: the run's output folder.
        run_tags: the experiment kind's own tags on its student runs.
        cell: the run's matrix cell key.

    Returns:
        The Context.
    """
    from kdexp.data import create_datamodule

    quiet_lightning()
    announce_processes(conf["trainer"])
    dm = create_datamodule(**conf["data"], seed=conf["seed"])
    dm.setup()  # bad roots and corrupt files fail here, before any training
    check_own_tokenizer(conf, dm)
    return Context(open_run(conf, run_dir, run_tags, cell), dm)


def check_own_tokenizer(conf: Mapping, dm) -> None:
    """A student with a tokenizer of its own (data.student_tokenizer) reads other tokens than its teacher: a method
    matching them position by position, and init_from_teacher (the teacher's embeddings), are refused here,
    before any run exists."""
    if getattr(dm, "student_tokenizer", None) is None:
        return
    from kdexp.distill import list_methods, matches_positions

    name = conf["distill"]["name"]
    if name in list_methods() and matches_positions(name):
        valid = [m for m in list_methods() if not matches_positions(m)]
        raise ConfigError(f"distill.name={name!r} matches teacher and student token by token, but with "
                          f"data.student_tokenizer={conf['data']['student_tokenizer']!r} their token positions do "
                          f"not correspond; choose one of: {', '.join(valid)}")
    if conf["student"].get("init_from_teacher"):
        raise ConfigError("student.init_from_teacher=true copies the teacher's embeddings, but data.student_tokenizer"
                          f"={conf['data']['student_tokenizer']!r} gives the student another vocabulary; drop one")


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
    """The configured method, built for this (student, teacher) pair: adapters depend on both.

    Args:
        ctx: the experiment (its `distill:` node, input shape, classes, training-set size).
        student: the student model.
        teacher: the teacher model.

    Returns:
        A kdexp.distill.Distiller with its adapters built.
    """
    method = method_from_config(ctx.conf["distill"])
    method.build(student.feature_shapes(ctx.input_shape), teacher.feature_shapes(ctx.input_shape),
                 ctx.dm.num_classes, ctx.dm.num_train)
    return method


def quiet_lightning() -> None:
    """Keep Lightning's start-up banners out of the summary; warnings still show."""
    for name in ("lightning.pytorch", "pytorch_lightning"):  # the second where the standalone package is installed
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode.*")  # the frozen teacher, on purpose
    warnings.filterwarnings("ignore", message=r".*LeafSpec.*")
    # DDP: epoch metrics are already all-reduced by EpochSums; Lightning's sync_dist advice does not apply
    warnings.filterwarnings("ignore", message=r".*sync_dist=True.*")
