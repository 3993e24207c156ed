"""Config groups generated from registries, so the zoo and the configs never drift apart.

`teacher=<name>` and `student=<name>` accept every model in `kdexp.models.list_models()`;
they are stored in Hydra's ConfigStore rather than as one YAML file per model and per role.
"""

from __future__ import annotations

from hydra.core.config_store import ConfigStore

from kdexp.models import list_models


def teacher_node(arch: str) -> dict:
    return {
        "arch": arch,
        "kwargs": {},                           # extra constructor arguments for create_model
        "ckpt": None,                           # a weights file to load instead of training
        "max_epochs": "${trainer.max_epochs}",  # epochs when kdexp trains the teacher itself
        "seed": "${seed}",
    }


def student_node(arch: str) -> dict:
    return {"arch": arch, "kwargs": {}}


def register_configs() -> None:
    cs = ConfigStore.instance()
    for arch in list_models():
        cs.store(group="teacher", name=arch, node=teacher_node(arch))
        cs.store(group="student", name=arch, node=student_node(arch))
