"""Reject bad configuration before any data is read or any model is trained."""

from __future__ import annotations

from pathlib import Path

from kdexp.config.keys import check_closed_keys, check_data_keys, check_model_keys
from kdexp.config.rules import bad, check_choice, check_fields, check_number, unknown_key
from kdexp.config.schema import TrainerSchema, TrainSchema
from kdexp.config.variants import KINDS


def validate_config(conf: dict) -> None:
    """Values first, then names (read from the source, kdexp.config.registry.known_names), then what needs the
    method classes: a bad value is rejected before torch or Lightning is imported (benchmarks/fail_fast.py)."""
    from kdexp.config.registry import known_names
    from kdexp.runtime.trainer_extras import check_trainer_arguments, check_trainer_node

    distill = conf["distill"]
    check_trainer_node(conf["trainer"])  # callbacks / loggers from config, reserved keys: before Lightning loads
    check_fields(conf["trainer"], TrainerSchema, "trainer")  # first: teacher.max_epochs follows it by default
    check_fields(conf, TrainSchema, "")  # ranges and choices of the typed keys, `tune` included
    variant = conf.get("variant")
    if variant:
        kind = variant.get("name")
        check_choice("variant.name", kind, sorted(KINDS))
        for node, schema in KINDS[kind].items():
            check_fields(conf[node], schema, node, strict=node == "variant")
    check_closed_keys(conf)
    check_model_keys(conf)
    validate_student_recipe(conf.get("student_recipe") or {}, conf["recipe"])
    ckpt = conf["teacher"].get("ckpt")
    if ckpt is not None and not Path(ckpt).is_file():
        raise bad("teacher.ckpt", ckpt, "no such file")

    models = known_names("kdexp.models", "register_model", "kdexp.models", "MODELS")
    for role in ("teacher", "student"):
        arch = conf[role]["arch"]
        if arch.partition(":")[0] in ("timm", "tv"):  # checked against the library (imports torch: only these)
            from kdexp.models.hub import check_name

            check_name(f"{role}.arch", arch)
        elif arch.partition(":")[0] not in models:  # family:source (hf:<hub id or folder>) names its family
            choices = f"{', '.join(models)}, or timm:NAME, tv:NAME"
            raise bad(f"{role}.arch", arch, f"unknown model; choose one of: {choices}")
    datasets = known_names("kdexp.data", "DATASETS.register", "kdexp.data", "DATASETS")
    if conf["data"]["name"] not in datasets:
        raise bad("data.name", conf["data"]["name"], f"unknown data set; choose one of: {', '.join(datasets)}")
    methods = known_names("kdexp.distill", "register_method", "kdexp.distill", "METHODS")
    if distill["name"] not in methods:
        raise bad("distill.name", distill["name"], f"unknown method; choose one of: {', '.join(methods)}")

    from kdexp.distill import method_terms  # the method classes: their settings and loss terms

    validate_method_keys(distill)
    check_data_keys(conf["data"])
    validate_weights(distill["weights"], method_terms(distill["name"]), "distill.weights")
    validate_stages(distill)
    check_trainer_arguments(conf["trainer"])  # imports Lightning: last


STUDENT_ONLY_RECIPE_KEYS = ("label_smoothing",)  # read by the student's loss (DistillModule), absent: 0


def validate_student_recipe(node: dict, recipe: dict) -> None:
    """`student_recipe`: keys of `recipe` (plus label_smoothing) with sensible numbers."""
    allowed = (*recipe, *STUDENT_ONLY_RECIPE_KEYS)
    for key, value in node.items():
        if key not in allowed:
            raise bad(f"student_recipe.{key}", value, f"a recipe key; choose from: {', '.join(allowed)}")
        rules = {"lr": {"gt": 0}, "weight_decay": {"ge": 0}, "label_smoothing": {"ge": 0, "lt": 1}}.get(key)
        if rules is not None:
            check_number(f"student_recipe.{key}", value, **rules)


def validate_weights(weights: dict, terms: tuple[str, ...], key: str) -> None:
    for name, value in weights.items():
        if name not in terms:
            raise bad(f"{key}.{name}", value, f"unknown loss term; this method has: {', '.join(terms)}")
        check_number(f"{key}.{name}", value, ge=0)
    if not any(float(v) > 0 for v in weights.values()):
        raise bad(key, weights, f"at least one weight must be > 0 (terms: {', '.join(terms)})")


def validate_stages(distill: dict) -> None:
    """A method with a first stage switched off (init_epochs=0) and every own term weighted 0 would train nothing of
    its own (TinyBERT and MiniLM weight their terms 0 in the main stage: their first stage trains them)."""
    import inspect

    from kdexp.distill import METHODS

    cls = METHODS.get(distill["name"])
    default = inspect.signature(cls.__init__).parameters.get("init_epochs")
    if default is None or distill.get("init_epochs", default.default) or not cls.terms:
        return
    if not any(float(distill["weights"].get(term, 0)) > 0 for term in cls.terms):
        raise bad("distill.init_epochs", 0, f"with no first stage, {distill['name']} needs a weight > 0 on one of "
                  f"its terms ({', '.join(cls.terms)}), e.g. distill.weights.{cls.terms[0]}=1")


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
            raise unknown_key(f"distill.{key}", distill[key], allowed, f"not a key of distill={distill['name']}")
