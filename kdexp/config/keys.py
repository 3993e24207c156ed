"""The keys each node of a parsed config may hold: any other is a misspelling (`student.foo=1`,
`teacher.max_epoch=3`, `++recipe.lrr=0.1`), refused in validation with one line naming the key, the closest
valid ones and all of them, before any store or MLflow run exists.

Hydra composes `data`, `teacher`, `student`, `distill` and `trainer` open (kdexp/config/schema.py OPEN_NODES):
what they take depends on a choice made in the same config. Here that choice is known: a model node takes its
schema's keys, an `hf` family model also `hf_config` (a student also `init_from_teacher`), the ensemble's
teacher its members' keys; `data` takes what the chosen data set's class takes (kdexp.data.datamodule_options).
The `distill` and `trainer` nodes are checked against the method's and Lightning's arguments
(kdexp.config.validate, kdexp.runtime.trainer_extras).
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping

from kdexp.config.rules import unknown_key
from kdexp.config.schema import HF_FAMILIES, OPEN_NODES, DataSchema, ModelSchema, TeacherSchema, TrainSchema
from kdexp.config.variants import KINDS

# Keys a model node of the `hf` group options holds, at the value that changes nothing: a `pair` that swaps in a
# model of another family keeps them, and they are no misspelling then.
HF_KEYS = {"teacher": {"hf_config": {}}, "student": {"hf_config": {}, "init_from_teacher": False}}


def model_keys(conf: Mapping, role: str) -> list[str]:
    """The keys the `teacher` or `student` node takes, for its arch and the experiment kind.

    Args:
        conf: the parsed config (`variant` absent or a kind's node).
        role: "teacher" or "student".

    Returns:
        The valid keys, the schema's first.
    """
    kind = (conf.get("variant") or {}).get("name")
    schema = KINDS.get(kind, {}).get(role) or (TeacherSchema if role == "teacher" else ModelSchema)
    keys = [f.name for f in dataclasses.fields(schema)]
    if str(conf[role]["arch"]).partition(":")[0] in HF_FAMILIES:
        keys += list(HF_KEYS[role])
    return keys


def check_model_keys(conf: Mapping, any_hf: bool = False) -> None:
    """`teacher` and `student` hold only the keys `model_keys` lists (an inert `hf` key of another family too;
    with `any_hf`, every `hf` key, whatever its value)."""
    for role in ("teacher", "student"):
        valid = [*model_keys(conf, role), *(HF_KEYS[role] if any_hf else ())]
        for key, value in (conf.get(role) or {}).items():
            if key not in valid and not (key in HF_KEYS[role] and value == HF_KEYS[role][key]):
                raise unknown_key(f"{role}.{key}", value, valid)


def check_closed_keys(conf: Mapping) -> None:
    """The typed nodes Hydra composes closed hold only their schema's keys: `++recipe.lrr=0.1` adds a key that
    Hydra refuses without `++`. `tune` is checked with its record keys by kdexp.bench.tuning.tune_settings."""
    hints = typing.get_type_hints(TrainSchema)
    for f in dataclasses.fields(TrainSchema):
        schema, node = hints[f.name], conf.get(f.name)
        if f.name in (*OPEN_NODES, "tune") or not dataclasses.is_dataclass(schema) or not isinstance(node, Mapping):
            continue
        valid = [c.name for c in dataclasses.fields(schema)]
        for key, value in node.items():
            if key not in valid:
                raise unknown_key(f"{f.name}.{key}", value, valid)


def check_data_keys(data: Mapping) -> None:
    """`data` holds only the options of the data set it names (imports the data sets: torch)."""
    from kdexp.data import datamodule_options

    valid = sorted({f.name for f in dataclasses.fields(DataSchema)} | set(datamodule_options(data["name"])) - {"seed"})
    for key, value in data.items():
        if key not in valid:
            raise unknown_key(f"data.{key}", value, valid)


def check_multirun_keys(conf: Mapping) -> None:
    """A multirun's misspelled model and typed-node keys, checked once in the launching process before any store
    exists (kdexp.tracking.prepare_hydra). Its sweep (a `pair` axis) may still change the architectures, so every
    `hf` key counts as valid here; each job validates its own config fully."""
    check_closed_keys(conf)
    check_model_keys(conf, any_hf=True)
