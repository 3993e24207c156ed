"""Distillation methods, selected by `distill.name` (see conf/distill/)."""

from __future__ import annotations

import inspect
from typing import Any

from kdexp.config.registry import Registry
from kdexp.distill.base import Distiller, IncompatiblePairError, kd_loss

METHODS: Registry[Distiller] = Registry("distillation method")
register_method = METHODS.register
BUILTIN_TERMS = ("ce", "kd")  # offered by DistillModule for every method


@register_method("none")
class NoDistillation(Distiller):
    """The vanilla student: hard labels only (weights: {ce: 1})."""


@register_method("kd")
class SoftTargets(Distiller):
    """Hinton KD: only the built-in `kd` term (weights: {ce: γ, kd: α})."""


def create_method(name: str, **kwargs: Any) -> Distiller:
    return METHODS.get(name)(**kwargs)


CONFIG_KEYS = ("name", "weights")  # what DistillModule keeps from a distill config; the rest is the method's


def method_from_config(distill: dict) -> Distiller:
    """The method of a `distill` config. `temperature` drives the built-in kd term and is also passed to
    a method with its own tempered softmax (DKD, DIST, kd_std), so one key means one thing everywhere."""
    cls = METHODS.get(distill["name"])
    kwargs = {k: v for k, v in distill.items() if k not in CONFIG_KEYS}
    if "temperature" not in inspect.signature(cls.__init__).parameters:
        kwargs.pop("temperature", None)
    return cls(**kwargs)


def list_methods() -> list[str]:
    return METHODS.names()


def method_terms(name: str) -> tuple[str, ...]:
    return BUILTIN_TERMS + tuple(METHODS.get(name).terms)


POSITION_FEATURES = frozenset({"stages", "preact", "attentions", "values", "queries", "keys"})


def matches_positions(name: str) -> bool:
    """Whether the method compares teacher and student feature by feature position (text: token by token), which
    means nothing when they read different tokenizations; logit and whole-sample embedding methods do not."""
    return bool(METHODS.get(name).needs & POSITION_FEATURES)


# Method families register themselves on import (kept after the registry they import).
from kdexp.distill import crd, hint, logit, relation, reviewkd, transformer, two_stage  # noqa: E402, F401

__all__ = [
    "BUILTIN_TERMS", "Distiller", "IncompatiblePairError", "create_method",
    "method_from_config", "kd_loss",
    "list_methods", "matches_positions", "method_terms", "register_method",
]
