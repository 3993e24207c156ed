"""The typed schema of `kdexp-train`'s config, registered in Hydra's ConfigStore by kdexp.config.store.

conf/train.yaml lists `train_schema` first in its defaults, so Hydra itself rejects a value of the wrong
type (`seed=abc`, `recipe.lr=fast`) while composing, before kdexp imports Lightning or reads data.
Nodes whose keys depend on a choice stay open for those keys while composing: `data` (a data set's own
options), `distill` (a method's own settings), `teacher`/`student` (ensemble members, `hf_config`), `trainer`
(any lightning.Trainer argument). Their common keys are typed; once composed, kdexp.config.keys and
kdexp.config.validate refuse any other key the chosen model, kind, data set, method or Lightning does not
take. `variant` is typed by the kind chosen (kdexp/config/variants.py). Only keys
present in every composed config are declared, and none but `tune`'s has a default of its own: the resolved
config (and so every cache key and matrix cell key) is what the YAML says. `tune` has no YAML: TuneSchema holds
its defaults, and an untouched `tune` node is left out of the parsed config (kdexp.config.parse). Ranges and
choices a type cannot express are `checked(...)` rules on the fields (kdexp.config.rules), checked by
kdexp.config.validate.

`teacher=<name>` and `student=<name>` accept every model in `kdexp.models.list_models()`; kdexp.config.store
generates them from the registry rather than one YAML file per model and per role.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Dict, List, Optional

from omegaconf import MISSING, OmegaConf

from kdexp.config.rules import checked, structured


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
    max_epochs: int = checked(ge=1)
    seed: int = MISSING
    # the teacher's own regularisation when kdexp trains it (the students' data and loss are untouched)
    augment: bool = False  # random crop (+ flip) of data's kind on the teacher's training batches
    label_smoothing: float = checked(0.0, ge=0, lt=1)


@dataclass
class DistillSchema:
    name: str = MISSING
    temperature: float = checked(gt=0)
    weights: Dict[str, float] = checked(ge=0)  # which terms a method has: kdexp.config.validate


@dataclass
class RecipeSchema:
    optimizer: str = MISSING
    lr: float = checked(gt=0)
    momentum: float = MISSING
    weight_decay: float = MISSING
    nesterov: bool = MISSING
    schedule: str = MISSING
    milestones: List[int] = MISSING
    gamma: float = MISSING


@dataclass
class TrainerSchema:
    max_epochs: int = checked(ge=1)
    accelerator: str = MISSING
    devices: Any = MISSING  # 1, 2, [0, 1], "auto"
    precision: Any = MISSING  # "32-true", "bf16-mixed", 32
    compile: bool = MISSING
    channels_last: bool = MISSING


@dataclass
class FinetuneSchema:
    epochs: int = checked(ge=0)
    lr_scale: float = MISSING


@dataclass
class EvalSchema:
    latency_batch: int = checked(ge=1)
    latency_repeats: int = checked(ge=1)  # the blocks of the latency protocol (kdexp.measure.latency)
    ece_bins: int = MISSING


@dataclass
class TeacherCacheSchema:
    mode: str = checked(choices=("auto", "on", "off"))  # kdexp/caching/teacher_outputs.py
    views: int = checked(ge=0)
    seed: int = checked(ge=0)
    max_gb: float = checked(gt=0)


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
class SamplerSchema:  # kdexp.sweep.factories.build_sampler
    OPEN: ClassVar[bool] = True  # the other samplers' own keys are allowed
    name: str = "tpe"
    seed: Optional[int] = 0
    n_startup_trials: int = checked(5, ge=0)


@dataclass
class PrunerSchema:  # kdexp.sweep.factories.build_pruner
    OPEN: ClassVar[bool] = True  # the other pruners' own keys (sha, hyperband) are allowed
    name: str = "median"
    n_startup_trials: int = checked(4, ge=0)
    n_warmup_steps: int = checked(1, ge=0)


TUNE_METRICS = ("student/val_acc", "student/best_val_acc")  # validation only: tuning never sees test


@dataclass
class TuneSchema:
    """A matrix's tuning (kdexp/bench/tuning.py): per (pair, method), one Optuna study on the validation split."""

    enabled: bool = False
    n_trials: int = checked(12, ge=1)      # per (pair, method, repeat), whatever the size of its search space
    epochs: int = checked(3, ge=1)         # per trial
    train_batches: float = checked(1.0, gt=0, le=1)  # part of each trial epoch's training batches (a random half
                                           #   at 0.5): settings are ranked on less data, cells train on all of it
    seed: int = checked(1000, ge=0)        # the trials' seed (repeat r: seed + r); must differ from the matrix's seeds
    allow_seed_overlap: bool = False       # true: trials may train at an evaluation seed (a ConfigError otherwise)
    repeats: int = checked(1, ge=1)        # independent studies per (pair, method), each with its own trial and
                                           #   sampler seed; each one's best settings train every seed (tag
                                           #   kdexp.tune_repeat; in the cell key only when > 1)
    match_budget: Optional[bool] = None    # an init stage that trains the student (AB, FSP, TinyBERT) takes its
                                           #   epochs from trainer.max_epochs (a trial's from tune.epochs): equal
                                           #   student steps. null: in tuned matrices; true: untuned ones too
    metric: str = checked("student/val_acc", choices=TUNE_METRICS, hint="tuning optimises a validation metric")
    sampler: SamplerSchema = field(default_factory=SamplerSchema)  # repeat r: sampler seed + r
    pruner: PrunerSchema = field(default_factory=PrunerSchema)
    storage: Optional[str] = None          # default sqlite:///${paths.root}/optuna.db
    experiment_suffix: str = "-tuning"
    # new tuning keys go here, each with its default and a `checked` rule where a type is not enough


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
    variant: Any = None  # None, or the chosen kind's node (kdexp/config/variants.py KINDS)
    tune: TuneSchema = field(default_factory=TuneSchema)  # a matrix's tuning (kdexp/bench/tuning.py)
    # recipe keys (and label_smoothing) of the student stages only; {}: none (kdexp.config.parse.recipe_for)
    student_recipe: Dict[str, Any] = field(default_factory=dict)
    imports: List[str] = field(default_factory=list)  # plug-in modules (kdexp/config/plugins.py)
    tags: List[str] = field(default_factory=list)  # lightning-hydra-template's tags=[dev,mnist]: one MLflow tag
    seed: int = checked(ge=0)
    baseline: bool = MISSING
    pair: Optional[str] = MISSING
    method: Optional[str] = MISSING
    student_lr: Dict[str, float] = MISSING
    distill_overrides: Dict[str, Any] = MISSING
    skip_finished: bool = MISSING


# Open while Hydra composes (keys beyond the typed ones allowed); kdexp.config.keys checks them once composed
OPEN_NODES = ("data", "teacher", "student", "distill", "trainer")
HF_FAMILIES = ("hf", "bert_l4", "bert_l6")  # Hugging Face models (kdexp/models/text.py): they take hf_config


def train_schema():
    node = structured(TrainSchema)  # tune.sampler, tune.pruner: OPEN
    for name in OPEN_NODES:
        OmegaConf.set_struct(node[name], False)
    return node
