"""Reject bad configuration before any data is read or any model is trained."""

from __future__ import annotations

import math
from pathlib import Path

from kdexp.config.errors import ConfigError


def _bad(key: str, value, allowed: str) -> ConfigError:
    return ConfigError(f"{key}={value!r} is invalid: {allowed}")


def _positive_int(conf: dict, key: str, value, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise _bad(key, value, f"must be an integer >= {minimum}")


def validate_config(conf: dict) -> None:
    """Values first, then names (read from the source, kdexp.config.registry.known_names), then what needs the
    method classes: a bad value is rejected before torch or Lightning is imported (benchmarks/fail_fast.py)."""
    from kdexp.config.registry import known_names
    from kdexp.runtime.trainer_extras import check_trainer_arguments, check_trainer_node

    distill = conf["distill"]
    if not distill["temperature"] > 0:
        raise _bad("distill.temperature", distill["temperature"], "must be a number > 0")
    for name, value in (distill.get("weights") or {}).items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise _bad(f"distill.weights.{name}", value, "a loss weight must be a finite number >= 0")
    check_trainer_node(conf["trainer"])  # callbacks / loggers from config, reserved keys: before Lightning loads
    _positive_int(conf, "trainer.max_epochs", conf["trainer"]["max_epochs"])
    _positive_int(conf, "teacher.max_epochs", conf["teacher"]["max_epochs"])
    _positive_int(conf, "finetune.epochs", conf["finetune"]["epochs"], minimum=0)
    _positive_int(conf, "seed", conf["seed"], minimum=0)
    for key in ("latency_batch", "latency_repeats"):  # repeats: the blocks of the latency protocol
        _positive_int(conf, f"eval.{key}", conf["eval"][key])
    if not float(conf["recipe"]["lr"]) > 0:
        raise _bad("recipe.lr", conf["recipe"]["lr"], "must be > 0")
    validate_student_recipe(conf.get("student_recipe") or {}, conf["recipe"])
    ckpt = conf["teacher"].get("ckpt")
    if ckpt is not None and not Path(ckpt).is_file():
        raise _bad("teacher.ckpt", ckpt, "no such file")

    models = known_names("kdexp.models", "register_model", "kdexp.models", "MODELS")
    for role in ("teacher", "student"):
        arch = conf[role]["arch"]
        if arch.partition(":")[0] in ("timm", "tv"):  # checked against the library (imports torch: only these)
            from kdexp.models.hub import check_name

            check_name(f"{role}.arch", arch)
        elif arch.partition(":")[0] not in models:  # family:source (hf:<hub id or folder>) names its family
            choices = f"{', '.join(models)}, or timm:NAME, tv:NAME"
            raise _bad(f"{role}.arch", arch, f"unknown model; choose one of: {choices}")
    datasets = known_names("kdexp.data", "DATASETS.register", "kdexp.data", "DATASETS")
    if conf["data"]["name"] not in datasets:
        raise _bad("data.name", conf["data"]["name"], f"unknown data set; choose one of: {', '.join(datasets)}")
    methods = known_names("kdexp.distill", "register_method", "kdexp.distill", "METHODS")
    if distill["name"] not in methods:
        raise _bad("distill.name", distill["name"], f"unknown method; choose one of: {', '.join(methods)}")

    from kdexp.distill import method_terms  # the method classes: their settings and loss terms

    validate_method_keys(distill)
    validate_weights(distill.get("weights") or {}, method_terms(distill["name"]), "distill.weights")
    check_trainer_arguments(conf["trainer"])  # imports Lightning: last


STUDENT_ONLY_RECIPE_KEYS = ("label_smoothing",)  # read by the student's loss (DistillModule), absent: 0


def validate_student_recipe(node: dict, recipe: dict) -> None:
    """`student_recipe`: keys of `recipe` (plus label_smoothing) with sensible numbers."""
    allowed = (*recipe, *STUDENT_ONLY_RECIPE_KEYS)
    for key, value in node.items():
        if key not in allowed:
            raise _bad(f"student_recipe.{key}", value, f"a recipe key; choose from: {', '.join(allowed)}")
        number = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
        if key == "lr" and not (number and value > 0):
            raise _bad("student_recipe.lr", value, "must be a number > 0")
        if key == "weight_decay" and not (number and value >= 0):
            raise _bad("student_recipe.weight_decay", value, "must be a number >= 0")
        if key == "label_smoothing" and not (number and 0 <= value < 1):
            raise _bad("student_recipe.label_smoothing", value, "must be a number in [0, 1)")


def validate_weights(weights: dict, terms: tuple[str, ...], key: str) -> None:
    for name, value in weights.items():
        if name not in terms:
            raise _bad(f"{key}.{name}", value, f"unknown loss term; this method has: {', '.join(terms)}")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise _bad(f"{key}.{name}", value, "a loss weight must be a finite number >= 0")
    if not any(float(v) > 0 for v in weights.values()):
        raise _bad(key, weights, f"at least one weight must be > 0 (terms: {', '.join(terms)})")


def validate_method_keys(distill: dict) -> None:
    """`distill` is open for a method's own settings (kdexp/config/schema.py): a key the method does not take is
    a typo, rejected here rather than as a TypeError when the method is built."""
    import inspect

    from torch import nn

    from kdexp.distill import CONFIG_KEYS, METHODS

    taken: set[str] = set()
    for cls in METHODS.get(distill["name"]).__mro__:  # up the __init__s that pass **kwargs on, to nn.Module's
        if "__init__" not in vars(cls):
            continue
        if cls is nn.Module:
            break
        params = inspect.signature(cls.__init__).parameters
        taken |= {k for k, p in params.items() if k != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            break
    else:
        return  # no nn.Module below: the method takes what it takes
    allowed = sorted({*CONFIG_KEYS, "temperature", *taken})
    for key in distill:
        if key not in allowed:
            raise _bad(f"distill.{key}", distill[key], f"distill={distill['name']} takes: {', '.join(allowed)}")
