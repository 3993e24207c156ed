"""What every stage of one experiment shares."""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping

from torch import nn

from kdexp.cache import ModelCache
from kdexp.config import recipe_for
from kdexp.distill import method_from_config
from kdexp.matrix import settings_key
from kdexp.models import create_model
from kdexp.progress import sweep_position
from kdexp.teacher_outputs import TeacherCacheSettings
from kdexp.tracking import Tracker


@dataclass
class Context:
    conf: Mapping  # the run's frozen config (kdexp.config.parse_config)
    dm: Any  # a kdexp TensorDataModule, set up
    tracker: Tracker
    cache: ModelCache
    run_dir: Path
    test: dict = field(default_factory=dict)  # role -> test logits, for agreement
    memo: dict = field(default_factory=dict)  # teacher outputs / views already loaded in this experiment
    run_tags: dict = field(default_factory=dict)  # the experiment kind's own tags on its student runs
    position: str | None = None  # "cell i/N" / "trial i/N" of a multirun, shown in progress lines

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
        return create_model(
            node["arch"], num_classes=self.dm.num_classes, in_channels=self.dm.in_channels, **(node.get("kwargs") or {})
        )

    def recipe_for(self, role: str, arch: str | None = None) -> dict:
        return recipe_for(self.conf, role, arch)

    def tags(self, role: str) -> dict[str, str]:
        """Config choices as tags, so that a benchmark is an MLflow query."""
        c = self.conf
        return {
            "kdexp.role": role, "data": c["data"]["name"], "teacher": c["teacher"]["arch"],
            "student": c["student"]["arch"], "distill": c["distill"]["name"], "seed": str(c["seed"]),
            **self.run_tags,
        }

    def alone_tags(self, label: str, arch: str, seed: int) -> dict[str, str]:
        """Tags of a model trained alone: shared by every experiment that reuses it."""
        return {"kdexp.role": label, "data": self.conf["data"]["name"], "arch": arch, "seed": str(seed)}

    @property
    def settings(self) -> str:
        """kdexp.settings of the student run: what every cell of one benchmark table shares."""
        return settings_key(self.conf)


def make_context(conf: Mapping, run_dir: str | Path, run_tags: dict[str, str] | None = None) -> Context:
    from kdexp.data import create_datamodule

    quiet_lightning()
    dm = create_datamodule(**conf["data"], seed=conf["seed"])
    dm.setup()  # bad roots and corrupt files fail here, before any training
    root = Path(conf["paths"]["root"])
    tracker = Tracker(conf["tracking"]["uri"], conf["tracking"]["experiment"], artifact_root=root / "mlartifacts")
    cache = ModelCache(Path(conf["paths"]["cache"]) / "models")
    return Context(conf, dm, tracker, cache, Path(run_dir), run_tags=dict(run_tags or {}),
                   position=sweep_position(conf))


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
