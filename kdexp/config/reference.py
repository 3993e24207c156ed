"""docs/reference.md, generated from the config itself: every group with its choices, every key of the
composed default config with its type (from the schema) and its YAML comment. A test fails when the file is
stale; regenerate it with `python -m kdexp.config.reference > docs/reference.md`."""

from __future__ import annotations

import dataclasses
import json
import re
import sys
import typing
from pathlib import Path
from typing import Any

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"  # shipped in the package (a link to conf/ in the repo)
KEY_LINE = re.compile(r"^(\s*)([A-Za-z_][\w.]*):(.*)$")


def yaml_comments(text: str) -> dict[str, str]:
    """{dotted key: its end-of-line comment, with continuation lines} of a block-style YAML file."""
    comments: dict[str, str] = {}
    stack: list[tuple[int, str]] = []
    last = None
    for line in text.splitlines():
        match = KEY_LINE.match(line)
        if match is None:
            cont = re.match(r"^\s*#\s*(.*)$", line)
            if cont and last and line.index("#") > 8:  # an indented comment continues the key above it
                comments[last] = f"{comments.get(last, '')} {cont.group(1).strip()}".strip()
            continue
        indent, key, rest = len(match.group(1)), match.group(2), match.group(3)
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, key))
        last = ".".join(k for _, k in stack)
        if "#" in rest and not rest.strip().startswith(("'", '"')):
            comments[last] = rest.split("#", 1)[1].strip()
    return comments


def schema_types(cls: type, prefix: str = "") -> dict[str, str]:
    """{dotted key: type name} of the typed schema's fields, nested dataclasses walked."""
    out: dict[str, str] = {}
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        hint = hints[field.name]
        if dataclasses.is_dataclass(hint):
            out.update(schema_types(hint, f"{prefix}{field.name}."))
        else:
            out[f"{prefix}{field.name}"] = type_name(hint)
    return out


def type_name(hint: Any) -> str:
    text = getattr(hint, "__name__", None) if not typing.get_args(hint) else None
    return text or str(hint).replace("typing.", "")


def flatten(node: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if isinstance(node, dict) and node:
        return [item for k, v in node.items() for item in flatten(v, f"{prefix}{k}.")]
    return [(prefix[:-1], node)]


def group_choices() -> dict[str, list[str]]:
    from kdexp.config.registry import known_names

    groups = {p.name: sorted(f.stem for f in p.glob("*.yaml")) for p in sorted(CONF_DIR.iterdir()) if p.is_dir()}
    groups["matrix"] = sorted(f.stem for f in (CONF_DIR / "matrix").glob("*.yaml"))
    groups["sweep"] = sorted(f.stem for f in (CONF_DIR / "sweep").glob("*.yaml"))
    models = known_names("kdexp.models", "register_model", "kdexp.models", "MODELS")
    groups["teacher"] = groups["student"] = models
    return dict(sorted(groups.items()))


def composed_defaults() -> dict:
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from kdexp.config.store import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="train")
    return OmegaConf.to_container(cfg, resolve=False)


def comment_sources() -> list[tuple[Path, str]]:
    """(file, key prefix) of train.yaml and of the default choice of each group, in that order."""
    from omegaconf import OmegaConf

    sources = [(CONF_DIR / "train.yaml", "")]
    for entry in OmegaConf.load(CONF_DIR / "train.yaml").get("defaults", []):
        if not isinstance(entry, dict) or len(entry) != 1:
            continue
        (group, choice), = entry.items()
        path = CONF_DIR / str(group) / f"{choice}.yaml"
        if choice and path.is_file():
            glob = path.read_text().startswith("# @package _global_")
            sources.append((path, "" if glob else f"{group}."))
    return sources


def render() -> str:
    from kdexp.config.schema import TrainSchema

    comments: dict[str, str] = {}
    for path, prefix in comment_sources():
        for key, text in yaml_comments(path.read_text()).items():
            comments.setdefault(prefix + key, text)
    types = schema_types(TrainSchema)
    lines = [
        "# Configuration reference",
        "",
        "Generated from the config (`python -m kdexp.config.reference > docs/reference.md`; a test fails when it",
        "is stale). A group is chosen with `GROUP=CHOICE`; a key is set with `KEY=VALUE` (`+KEY=VALUE` for a key",
        "that the default config lacks). Types come from the schema (`kdexp/config/schema.py`): Hydra rejects a",
        "value of another type while composing. Keys marked *open* take what the chosen data set, method or",
        "Lightning accepts, checked in validation before any run starts.",
        "",
        "## Groups",
        "",
        "| group | choices |",
        "|---|---|",
    ]
    for group, choices in group_choices().items():
        lines.append(f"| `{group}` | {', '.join(f'`{c}`' for c in choices)} |")
    lines += ["", "## Keys of the default config (`kdexp-train` with no overrides)", "",
              "| key | type | default | what |", "|---|---|---|---|"]
    for key, value in flatten(composed_defaults()):
        if key.startswith("hydra."):
            continue
        shown = json.dumps(value) if value is None or isinstance(value, (bool, list, dict)) else str(value)
        shown = shown.replace("|", "\\|")
        what = comments.get(key, "").replace("|", "\\|")
        lines.append(f"| `{key}` | {types.get(key, 'open')} | `{shown}` | {what} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.stdout.write(render())
