"""Hydra's composition errors as kdexp's one line: what was wrong and, where Hydra knows them, the valid choices.

Hydra prints a missing option, a bad override or a wrong type over several lines (the available options, the
config search path, the OmegaConf key and types) and exits 1; kdexp-train says it in one line and exits 2,
as for any other bad input (kdexp/cli.py).
"""

from __future__ import annotations

import dataclasses
import re

import yaml
from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

from kdexp.config.rules import unknown_key

GRAMMAR = "https://hydra.cc/docs/advanced/override_grammar/basic/"


def compose_error_line(exc: BaseException) -> str | None:
    """One line for an error Hydra raised while composing the config, or None for any other error.

    Args:
        exc: the exception Hydra's app raised.

    Returns:
        The message (no program name, no newline), or None.
    """
    if isinstance(exc, MissingConfigException) and exc.options and "/" in (exc.missing_cfg_file or ""):
        group, _, option = exc.missing_cfg_file.rpartition("/")
        return f"{group}={option}: unknown {group.rpartition('/')[2]}; choose one of: {', '.join(exc.options)}"
    if isinstance(exc, OverrideParseException):
        return f"{exc.override}: not a valid override ({first_line(exc.message)}); grammar: {GRAMMAR}"
    if not isinstance(exc, ConfigCompositionException):
        return None
    cause = exc.__cause__
    if isinstance(cause, OmegaConfBaseException) and getattr(cause, "full_key", None):
        return omegaconf_line(str(exc), cause)
    paragraph = str(exc).split("\n\n")[0]  # the part before Hydra's option list and search path
    return " ".join(line.strip() for line in paragraph.splitlines() if line.strip())


def omegaconf_line(what: str, cause: OmegaConfBaseException) -> str:
    """A key a closed node lacks (valid keys from its dataclass) or a value of the wrong type."""
    key, kind = cause.full_key, cause.object_type
    if isinstance(cause, (ConfigAttributeError, ConfigKeyError)) and dataclasses.is_dataclass(kind):
        given = re.search(r"\+\S+?=(.*)$", what, re.MULTILINE)  # Hydra's hint: "use +recipe.lrr=0.1"
        valid = [f.name for f in dataclasses.fields(kind)]
        return str(unknown_key(key, typed(given.group(1)) if given else None, valid))
    value = getattr(cause, "value", None)
    return f"{key}={value!r} is invalid: {first_line(cause.msg)}"


def typed(text: str) -> object:
    """An override's value as YAML reads it (0.1 a float, abc a string), for the message's repr."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def first_line(text: object) -> str:
    return str(text).strip().splitlines()[0] if str(text).strip() else ""
