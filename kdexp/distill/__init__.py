"""Distillation methods, selected by `distill.name` (see conf/distill/)."""

from __future__ import annotations

from typing import Any

from kdexp.distill.base import Distiller, IncompatiblePairError, kd_loss
from kdexp.registry import Registry

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


def list_methods() -> list[str]:
    return METHODS.names()


def method_terms(name: str) -> tuple[str, ...]:
    return BUILTIN_TERMS + tuple(METHODS.get(name).terms)


# Method families register themselves on import (kept after the registry they import).
from kdexp.distill import crd, hint, logit, relation, reviewkd, two_stage  # noqa: F401

__all__ = [
    "BUILTIN_TERMS", "Distiller", "IncompatiblePairError", "create_method", "kd_loss",
    "list_methods", "method_terms", "register_method",
]
