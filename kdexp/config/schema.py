"""The typed schema of `kdexp-train`'s config, registered in Hydra's ConfigStore.

conf/train.yaml lists `train_schema` first in its defaults, so Hydra itself rejects a value of the wrong
type (`seed=abc`, `recipe.lr=fast`) while composing, before kdexp imports Lightning or reads data.
Nodes whose keys depend on a choice stay open for those keys: `data` (a data set's own options), `distill`
(a method's own settings), `teacher`/`student` (ensemble members), `trainer` (any lightning.Trainer
argument), `variant`. Their common keys are typed; kdexp.config.validate checks the open ones against what the
chosen data set / method accepts. Only keys present in every composed config are declared, and none has a
default of its own: the resolved config (and so every cache key and matrix cell key) is what the YAML says.

`teacher=<name>` and `student=<name>` accept every model in `kdexp.models.list_models()`; they are
generated from the registry rather than written as one YAML file per model and per role.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf


@dataclass
class DataSchema:
    name: str = MISSING
    root: Optional[str] = MISSING
    limit: Optional[int] = MISSING
    val_fraction: float = MISSING
    split_seed: int = MISSING
    batch_size: int = MISSING
    eval_batch_size: int = MISSING
    augment: bool = MISSING
    device: str = MISSING
    pin_memory: bool = MISSING


@dataclass
class ModelSchema:
    arch: str = MISSING
    kwargs: Dict[str, Any] = MISSING


@dataclass
class TeacherSchema(ModelSchema):
    ckpt: Optional[str] = MISSING
    max_epochs: int = MISSING
    seed: int = MISSING


@dataclass
class DistillSchema:
    name: str = MISSING
    temperature: float = MISSING
    weights: Dict[str, float] = MISSING


@dataclass
class RecipeSchema:
    optimizer: str = MISSING
    lr: float = MISSING
    momentum: float = MISSING
    weight_decay: float = MISSING
    nesterov: bool = MISSING
    schedule: str = MISSING
    milestones: List[int] = MISSING
    gamma: float = MISSING


@dataclass
class TrainerSchema:
    max_epochs: int = MISSING
    accelerator: str = MISSING
    devices: Any = MISSING  # 1, 2, [0, 1], "auto"
    precision: Any = MISSING  # "32-true", "bf16-mixed", 32
    compile: bool = MISSING
    channels_last: bool = MISSING


@dataclass
class FinetuneSchema:
    epochs: int = MISSING
    lr_scale: float = MISSING


@dataclass
class EvalSchema:
    latency_batch: int = MISSING
    latency_repeats: int = MISSING
    ece_bins: int = MISSING


@dataclass
class TeacherCacheSchema:
    mode: str = MISSING
    views: int = MISSING
    seed: int = MISSING
    max_gb: float = MISSING


@dataclass
class PathsSchema:
    root: str = MISSING
    cache: str = MISSING


@dataclass
class TrackingSchema:
    uri: str = MISSING
    experiment: str = MISSING
    artifact_root: str = MISSING
    log_checkpoints: bool = MISSING
    log_model: bool = MISSING
    export_student: bool = MISSING
    register: Optional[str] = MISSING
    system_metrics: bool = MISSING
    tags: Dict[str, Any] = field(default_factory=dict)  # the user's MLflow tags: +tracking.tags.note=x


@dataclass
class TrainSchema:
    data: DataSchema = field(default_factory=DataSchema)
    teacher: TeacherSchema = field(default_factory=TeacherSchema)
    student: ModelSchema = field(default_factory=ModelSchema)
    distill: DistillSchema = field(default_factory=DistillSchema)
    recipe: RecipeSchema = field(default_factory=RecipeSchema)
    trainer: TrainerSchema = field(default_factory=TrainerSchema)
    finetune: FinetuneSchema = field(default_factory=FinetuneSchema)
    eval: EvalSchema = field(default_factory=EvalSchema)
    teacher_cache: TeacherCacheSchema = field(default_factory=TeacherCacheSchema)
    paths: PathsSchema = field(default_factory=PathsSchema)
    tracking: TrackingSchema = field(default_factory=TrackingSchema)
    variant: Optional[Dict[str, Any]] = None
    tune: Dict[str, Any] = field(default_factory=dict)  # a matrix's tuning (kdexp/bench/tuning.py); {}: none
    # recipe keys (and label_smoothing) of the student stages only; {}: none (kdexp.config.parse.recipe_for)
    student_recipe: Dict[str, Any] = field(default_factory=dict)
    imports: List[str] = field(default_factory=list)  # plug-in modules (kdexp/config/plugins.py)
    tags: List[str] = field(default_factory=list)  # lightning-hydra-template's tags=[dev,mnist]: one MLflow tag
    seed: int = MISSING
    baseline: bool = MISSING
    pair: Optional[str] = MISSING
    method: Optional[str] = MISSING
    student_lr: Dict[str, float] = MISSING
    distill_overrides: Dict[str, Any] = MISSING
    skip_finished: bool = MISSING


OPEN_NODES = ("data", "teacher", "student", "distill", "trainer")  # keys beyond the typed ones allowed


def train_schema():
    node = OmegaConf.structured(TrainSchema)
    for name in OPEN_NODES:
        OmegaConf.set_struct(node[name], False)
    return node


def teacher_node(arch: str) -> dict:
    return {
        "arch": arch,
        "kwargs": {},                           # extra constructor arguments for create_model
        "ckpt": None,                           # a weights file to load instead of training
        "max_epochs": "${trainer.max_epochs}",  # epochs when kdexp trains the teacher itself
        "seed": "${seed}",
        **hf_keys(arch),
    }


def student_node(arch: str) -> dict:
    return {"arch": arch, "kwargs": {}, **hf_keys(arch),
            **({"init_from_teacher": False} if arch == "hf" else {})}  # true: DistilBERT's every-k-th-layer init


def hf_keys(arch: str) -> dict:
    """`teacher=hf` / `student=hf` (arch hf:<hub id or folder>, or a BERT from scratch): config overrides
    (num_hidden_layers, hidden_size, ...) that build the model from scratch; the other models have no such key."""
    return {"hf_config": {}} if arch == "hf" else {}


def register_configs(models: list[str] | None = None) -> None:
    if models is None:  # without importing the zoo (torch): a bad value is rejected in a second or two
        from kdexp.config.registry import known_names

        models = known_names("kdexp.models", "register_model", "kdexp.models", "MODELS")
    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=train_schema())
    for arch in models:
        cs.store(group="teacher", name=arch, node=teacher_node(arch))
        cs.store(group="student", name=arch, node=student_node(arch))
