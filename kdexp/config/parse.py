"""The resolved config of one run: parsed once, then read-only.

`parse_config` resolves the composed config, applies the benchmark-matrix keys, validates it and freezes
it: every stage reads the same values, and a stage that needs another value for one role asks for it
(`recipe_for(conf, "student")`) instead of rewriting the config. Frozen nodes are dict/list subclasses, so
JSON fingerprints (cache and matrix cell keys), isinstance checks and `{**node, ...}` copies work as before.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kdexp.config.matrix_keys import apply_matrix_keys, student_lr

READ_ONLY = "the run's config is read-only: build a new node ({**node, key: value}) instead of changing it"


class FrozenDict(dict):
    def _read_only(self, *args, **kwargs):
        raise TypeError(READ_ONLY)

    __setitem__ = __delitem__ = update = pop = popitem = setdefault = clear = __ior__ = _read_only

    def __reduce__(self):  # copy.deepcopy and pickle rebuild it whole instead of item by item
        return FrozenDict, (dict(self),)


class FrozenList(list):
    def _read_only(self, *args, **kwargs):
        raise TypeError(READ_ONLY)

    __setitem__ = __delitem__ = append = extend = insert = pop = remove = clear = sort = reverse = _read_only
    __iadd__ = __imul__ = _read_only

    def __reduce__(self):
        return FrozenList, (list(self),)


def freeze(node: Any) -> Any:
    if isinstance(node, Mapping):
        return FrozenDict({k: freeze(v) for k, v in node.items()})
    if isinstance(node, (list, tuple)):
        return FrozenList(freeze(v) for v in node)
    return node


def thaw(node: Any) -> Any:
    """Plain, mutable containers (for YAML dumps and for code that builds a derived config)."""
    if isinstance(node, Mapping):
        return {k: thaw(v) for k, v in node.items()}
    if isinstance(node, (list, tuple)):
        return [thaw(v) for v in node]
    return node


def parse_config(cfg: Any, stores: bool = False) -> FrozenDict:
    """A composed DictConfig (or a plain dict) -> the run's frozen, validated config. `stores`: also reach the
    tracking store (normalising its URI) and keep it apart from a sweep's Optuna study: one clear error
    (kdexp.tracking.stores.StoreError) before any work, not a traceback halfway."""
    from omegaconf import OmegaConf

    from kdexp.config.validate import validate_config

    if isinstance(cfg, FrozenDict):
        return cfg
    conf = OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else thaw(cfg)
    conf.pop("hydra", None)
    from kdexp.config.plugins import load_plugins

    load_plugins(conf.get("imports") or [])  # users' models / methods / data sets, before names are checked
    # the schema's empty slots: absent, as before they existed (run params, cell keys)
    for slot in ("variant", "tune", "imports", "student_recipe"):
        if slot in conf and (not conf[slot] or (slot == "tune" and conf[slot] == untouched_tune())):
            del conf[slot]
    apply_matrix_keys(conf)  # `method` label, `pair` -> teacher/student arch, `distill_overrides`
    resolve_student_tokenizer(conf)  # after `pair`: `student` names the cell's student
    validate_config(conf)
    if stores:
        from kdexp.tracking.stores import check_stores

        check_stores({**conf, "tracking": dict(conf["tracking"])})  # the URI as the user gave it stays
    return freeze(conf)


STUDENT_TOKENIZER_CHOICES = ("null (the teacher's), student (the student's own hf:<hub id or folder>), "
                             "hf:<hub id or folder> or a folder")


def resolve_student_tokenizer(conf: dict) -> None:
    """`data.student_tokenizer=student` -> the student's hf:<hub id or folder> (its arch, or kwargs.source of
    bert_l6 / bert_l4); any other value must be hf:<...> or a folder. Loading it is the data module's check."""
    data = conf.get("data") or {}
    value = data.get("student_tokenizer")
    if value is None:
        return
    from pathlib import Path

    from kdexp.config.rules import bad

    if value == "student":
        arch, source = str(conf["student"]["arch"]), (conf["student"].get("kwargs") or {}).get("source")
        own = arch if arch.startswith("hf:") and len(arch) > 3 else f"hf:{source}" if source else None
        if own is None:
            raise bad("data.student_tokenizer", value, f"student.arch={arch!r} has no tokenizer of its own (an "
                      "hf:<hub id or folder> model); give one: data.student_tokenizer=hf:<hub id or folder>")
        data["student_tokenizer"] = own
    elif not (str(value).startswith("hf:") and len(str(value)) > 3) and not Path(str(value)).expanduser().is_dir():
        raise bad("data.student_tokenizer", value, f"not a folder; choose {STUDENT_TOKENIZER_CHOICES}")


def untouched_tune() -> dict:
    """The `tune` node as TuneSchema's defaults make it: tuning off and nothing set."""
    from dataclasses import asdict

    from kdexp.config.schema import TuneSchema

    return asdict(TuneSchema())


def recipe_for(conf: Mapping, role: str, arch: str | None = None) -> dict:
    """The recipe one role trains with. The teacher (and ensemble members) use `recipe`; a student of
    architecture `arch` (default: `student.arch`) uses `student_lr[arch]` where a matrix sets one — the
    papers' "lr 0.01 for MobileNetV2/ShuffleNet students" — for its vanilla baseline and every stage, then
    `student_recipe` (e.g. a tuned vanilla student's lr, weight_decay, label_smoothing). The teacher's recipe,
    and so its cache key, never sees either; it adds `teacher.label_smoothing` where that is set."""
    recipe = dict(conf["recipe"])
    if role == "teacher":
        smoothing = float(conf["teacher"].get("label_smoothing") or 0.0)
        return {**recipe, "label_smoothing": smoothing} if smoothing else recipe  # 0: the key it always had
    lr = student_lr(conf, arch or conf["student"]["arch"])
    return {**recipe, **({} if lr is None else {"lr": lr}), **(conf.get("student_recipe") or {})}
