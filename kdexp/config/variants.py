"""The typed settings of each experiment kind (`variant=<kind>`).

Each kind declares the nodes its YAML sets, in KINDS; kdexp.config.store stores them in Hydra's ConfigStore as
`variant/schema/<kind>`, and conf/variant/<kind>.yaml lists that first in its defaults:

    defaults:
      - /variant/schema/<kind>@_global_
      - _self_

so a wrong type (`variant.generations=abc`) or an unknown key fails while Hydra composes, before torch is
imported. Kind settings have no defaults here: the YAML holds them (and says what they mean). What a type
cannot say is in `checked(...)` rules, checked by kdexp.config.validate.check_fields.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from omegaconf import MISSING

from kdexp.config.rules import checked
from kdexp.config.schema import TeacherSchema
from kdexp.policy.settings import PPOSettings, StudentSettings

COMBINE = ("mean_logits", "mean_probs")           # kdexp.models.ensemble.EnsembleTeacher
AUGMENT_POLICIES = ("mixup", "cutmix", "erasing")  # kdexp.variants.augmented
QUANT_BACKENDS = ("x86", "fbgemm", "qnnpack", "onednn")
MODEL_NODE = ("arch", "kwargs")                    # a model entry: a name or {arch, kwargs}
MEMBER_KEYS = ("arch", "seed", "weight", "kwargs", "ckpt")


@dataclass
class KindSchema:
    name: str = MISSING
    label: Optional[str] = MISSING  # report row label (tag kdexp.method)


@dataclass
class ChainSchema(KindSchema):
    assistants: List[Any] = checked(models=MODEL_NODE)


@dataclass
class BornAgainSchema(KindSchema):
    generations: int = checked(ge=1)
    ensemble_combine: str = checked(choices=COMBINE)


@dataclass
class MutualSchema(KindSchema):
    students: Optional[List[Any]] = checked(models=MODEL_NODE)
    seeds: Optional[List[int]] = checked(ge=0)
    temperature: float = checked(gt=0)
    weights: Dict[str, float] = checked(keys=("ce", "kl"), ge=0)


@dataclass
class AugmentedSchema(KindSchema):
    policy: str = checked(choices=AUGMENT_POLICIES)
    alpha: float = checked(gt=0)
    ce_weight: float = checked(ge=0)
    erase_prob: float = checked(ge=0, le=1)
    erase_scale: List[float] = checked(gt=0, le=1)
    erase_ratio: List[float] = checked(gt=0)


@dataclass
class QuantizedSchema(KindSchema):
    backend: str = checked(choices=QUANT_BACKENDS)


@dataclass
class EnsembleTeacherSchema(TeacherSchema):
    """The `teacher` node of variant=ensemble: the keys it adds."""

    members: List[Any] = checked(models=MEMBER_KEYS)
    seeds: Optional[List[int]] = checked(ge=0)
    weights: Optional[List[float]] = checked(ge=0)
    combine: str = checked(choices=COMBINE)


@dataclass
class PolicySchema:
    name: str = MISSING
    env: str = MISSING
    teacher_hidden: List[int] = checked(gt=0)
    student_hidden: List[int] = checked(gt=0)
    teacher_seed: int = checked(ge=0)
    ppo: PPOSettings = field(default_factory=PPOSettings)
    states: int = checked(ge=1)
    heldout_states: int = checked(ge=1)
    collect: str = checked(choices=("sample", "greedy"))
    student: StudentSettings = field(default_factory=StudentSettings)
    eval_episodes: int = checked(ge=1)
    eval_seed: int = checked(ge=0)


# kind -> {config node: its schema}; the kind's YAML sets exactly these nodes
KINDS: dict[str, dict[str, type]] = {
    "chain": {"variant": ChainSchema},
    "born_again": {"variant": BornAgainSchema},
    "mutual": {"variant": MutualSchema},
    "ensemble": {"variant": KindSchema, "teacher": EnsembleTeacherSchema},
    "augmented": {"variant": AugmentedSchema},
    "quantized": {"variant": QuantizedSchema},
    "policy": {"variant": PolicySchema},
}


def model_node(entry: Any) -> dict:
    """A model entry (a name, or {arch, kwargs}) as {arch, kwargs}; its form is checked by its `models` rule."""
    node = {"arch": entry} if isinstance(entry, str) else dict(entry)
    return {"arch": node["arch"], "kwargs": node.get("kwargs") or {}}  # kwargs may be left out of an entry
