"""What kdexp-train's config groups are made of, registered in Hydra's ConfigStore before it composes: the typed
schema (`train_schema`, kdexp/config/schema.py), each experiment kind's typed nodes (`variant/schema/<kind>`,
kdexp/config/variants.py) and a `teacher`/`student` option per model of the zoo."""

from __future__ import annotations

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from kdexp.config.rules import model_names
from kdexp.config.schema import train_schema
from kdexp.config.variants import KINDS


def kind_node(kind: str) -> DictConfig:
    """The nodes a kind's YAML sets, typed (stored as variant/schema/<kind>, placed @_global_)."""
    node = OmegaConf.create({name: OmegaConf.structured(schema) for name, schema in KINDS[kind].items()})
    if "teacher" in node:  # the teacher node stays open (TeacherSchema's keys come from teacher=<arch>)
        OmegaConf.set_struct(node.teacher, False)
    return node


def teacher_node(arch: str) -> dict:
    return {
        "arch": arch,
        "kwargs": {},                           # extra constructor arguments for create_model
        "ckpt": None,                           # a weights file to load instead of training
        "max_epochs": "${trainer.max_epochs}",  # epochs when kdexp trains the teacher itself
        "seed": "${seed}",
        "augment": False,                       # the teacher trains on augmented batches (students do not)
        "label_smoothing": 0.0,                 # the teacher's cross-entropy smoothing (students' is 0)
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
    """Args: models: the zoo's names (default: read from the source, without importing torch)."""
    models = model_names() if models is None else models  # no torch: a bad value is rejected in a second or two
    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=train_schema())
    for kind in KINDS:
        cs.store(group="variant/schema", name=kind, node=kind_node(kind))
    for arch in models:
        cs.store(group="teacher", name=arch, node=teacher_node(arch))
        cs.store(group="student", name=arch, node=student_node(arch))
