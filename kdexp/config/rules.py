"""Rules on config values that a type cannot express — a number > 0, one of several names — declared once on
the schema's fields with `checked(...)` and checked by `check_fields`: a bad value is one ConfigError naming
the key, the value and what is allowed. Hydra checks the types themselves while composing
(kdexp/config/schema.py, kdexp/config/variants.py); these rules run in kdexp.config.validate, before torch.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import typing
from numbers import Integral, Real
from typing import Any

from omegaconf import MISSING

from kdexp.config.errors import ConfigError


def bad(key: str, value, allowed: str) -> ConfigError:
    return ConfigError(f"{key}={value!r} is invalid: {allowed}")


def unknown_key(key: str, value: Any, valid: list[str] | tuple[str, ...], reason: str = "unknown key") -> ConfigError:
    """The error for a key no schema, data set, method, model or Trainer takes: a misspelling, most often.

    Args:
        key: the full key, e.g. `student.foo`.
        value: its value.
        valid: the keys that node takes.
        reason: what the key is not, e.g. "not a key of distill=kd".

    Returns:
        One ConfigError naming the key, the closest valid keys and all of them.
    """
    close = difflib.get_close_matches(key.rpartition(".")[2], valid, n=3)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    return bad(key, value, f"{reason}; {hint}valid keys: {', '.join(valid)}")


def checked(default: Any = MISSING, **rules: Any) -> Any:
    """A dataclass field whose value `check_value` checks against `rules`.

    Args:
        default: the field's default (MISSING: the YAML gives it).
        rules: gt / ge / lt / le (numbers; an int field's must be integers); choices (names, or a function
            returning them); keys (the names a dict's keys may take); models (each entry is a model name or a
            dict of these keys); hint (said after the error).
    Returns:
        A dataclasses.field carrying the rules in its metadata.
    """
    return dataclasses.field(default=default, metadata={"check": rules})


def check_number(key: str, value: Any, *, integer: bool = False, gt: float | None = None, ge: float | None = None,
                 lt: float | None = None, le: float | None = None) -> None:
    """One number: an int (`integer`) or a finite real, within the bounds given; ConfigError naming all of it."""
    low = f"({gt}" if gt is not None else f"[{ge}" if ge is not None else None
    high = f"{lt})" if lt is not None else f"{le}]" if le is not None else None
    if low and high:
        bounds = f" in {low}, {high}"
    else:
        bounds = "".join(f" {op} {b}" for op, b in ((">", gt), (">=", ge), ("<", lt), ("<=", le)) if b is not None)
    allowed = f"must be {'an integer' if integer else 'a number'}{bounds}"
    if isinstance(value, bool) or not isinstance(value, Integral if integer else Real) or not math.isfinite(value):
        raise bad(key, value, allowed)
    if ((gt is not None and not value > gt) or (ge is not None and not value >= ge)
            or (lt is not None and not value < lt) or (le is not None and not value <= le)):
        raise bad(key, value, allowed)


def check_choice(key: str, value: Any, choices: tuple | list) -> None:
    if value not in choices:
        raise bad(key, value, f"choose one of: {', '.join(map(str, choices))}")


def check_value(key: str, value: Any, rules: dict, integer: bool = False) -> None:
    """`value` (each item of a list, each value of a dict) against a field's rules (see `checked`)."""
    if value is None or not rules:
        return
    try:
        _check(key, value, rules, integer)
    except ConfigError as exc:
        if "hint" in rules:
            raise ConfigError(f"{exc}; {rules['hint']}") from None
        raise


def _check(key: str, value: Any, rules: dict, integer: bool) -> None:
    if isinstance(value, dict) and "keys" in rules:
        for name in value:
            if name not in rules["keys"]:
                raise ConfigError(f"{key}.{name} is invalid: unknown key; choose one of: {', '.join(rules['keys'])}")
    if isinstance(value, (list, tuple)) or (isinstance(value, dict) and "models" not in rules):
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for i, item in items:
            _check(f"{key}.{i}" if isinstance(value, dict) else f"{key}[{i}]", item, rules, integer)
        return
    if "models" in rules:
        entry = {"arch": value} if isinstance(value, str) else dict(value)
        names = model_names()
        if set(entry) - set(rules["models"]) or entry.get("arch") not in names:
            raise bad(key, value, f"an architecture name or {{{', '.join(rules['models'])}}} with arch one of: "
                                   f"{', '.join(names)}")
    if "choices" in rules:
        choices = rules["choices"]
        check_choice(key, value, choices() if callable(choices) else choices)
    if rules.keys() & {"gt", "ge", "lt", "le"}:
        check_number(key, value, integer=integer, **{k: rules[k] for k in ("gt", "ge", "lt", "le") if k in rules})


def check_keys(node: dict, schema: type, key: str) -> None:
    """A plain-dict config (one Hydra did not compose) has only the keys `schema` declares."""
    allowed = [f.name for f in dataclasses.fields(schema)]
    unknown = sorted(set(node) - set(allowed))
    if unknown:
        raise ConfigError(f"{key}: unknown keys {unknown}; allowed: {', '.join(allowed)}")


def structured(schema: type):
    """OmegaConf's node of a dataclass, with the nested ones marked OPEN left open for keys of their own."""
    from omegaconf import OmegaConf

    node = OmegaConf.structured(schema)

    def unlock(n, cls: type) -> None:
        if getattr(cls, "OPEN", False):
            OmegaConf.set_struct(n, False)
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if dataclasses.is_dataclass(hints[f.name]):
                unlock(n[f.name], hints[f.name])

    unlock(node, schema)
    return node


def plain(node: Any) -> Any:
    """Plain dicts and lists all the way down."""
    if isinstance(node, dict):
        return {k: plain(v) for k, v in node.items()}
    if isinstance(node, list):
        return [plain(v) for v in node]
    return node


def check_types(node: dict, schema: type, key: str) -> None:
    """The types Hydra checks while composing, for a plain dict: OmegaConf merges it into the schema."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    node = plain(node)  # a parsed config's read-only nodes are dict subclasses OmegaConf refuses
    try:
        OmegaConf.merge(structured(schema), node)
    except OmegaConfBaseException as exc:
        value = OmegaConf.select(OmegaConf.create(node), str(exc.full_key), default=None)
        raise ConfigError(f"{key}.{exc.full_key}={value!r} is invalid: {str(exc.msg).splitlines()[0]}") from None


def check_fields(node: dict, schema: type, key: str, strict: bool = False) -> None:
    """Every field of the dataclass `schema` in `node` (the config node at `key`) against its `checked` rules,
    nested dataclasses included; `strict` (a node Hydra may not have composed): also every value of its type
    and no key beyond the schema's (but in a schema marked OPEN)."""
    _check_fields(node, schema, key, strict)
    if strict:
        check_types(node, schema, key)


def _check_fields(node: dict, schema: type, key: str, strict: bool) -> None:
    if strict and not getattr(schema, "OPEN", False):
        check_keys(node, schema, key)
    hints = typing.get_type_hints(schema)
    for f in dataclasses.fields(schema):
        if f.name not in node:
            continue
        hint, name = hints[f.name], f"{key}.{f.name}" if key else f.name
        if dataclasses.is_dataclass(hint):
            _check_fields(node[f.name] or {}, hint, name, strict)
        else:
            integer = int in (hint, *typing.get_args(hint), *(a for t in typing.get_args(hint)
                                                              for a in typing.get_args(t)))
            check_value(name, node[f.name], f.metadata.get("check", {}), integer)


def model_names() -> list[str]:
    from kdexp.config.registry import known_names

    return known_names("kdexp.models", "register_model", "kdexp.models", "MODELS")
