"""docs/reference.md is generated from the config: it must match what the config says today."""

from __future__ import annotations

from pathlib import Path

from kdexp.config.reference import render, yaml_comments

DOC = Path(__file__).resolve().parents[2] / "docs" / "reference.md"


def test_reference_is_not_stale():
    assert DOC.read_text() == render(), "regenerate: python -m kdexp.config.reference > docs/reference.md"


def test_reference_lists_every_top_level_key_with_its_schema_type():
    text = render()
    assert "| `seed` | int | `0` |" in text and "| `recipe.lr` | float |" in text
    assert "`kd_temperature`" in text and "`fashion_full`" in text  # the linked sweep and matrix groups


def test_yaml_comments_follow_nesting_and_continuation_lines():
    text = ("a:\n  b: 1   # the b\n  c:\n    d: x  # first\n         #   second\ne: 2\n")
    assert yaml_comments(text) == {"a.b": "the b", "a.c.d": "first second"}
