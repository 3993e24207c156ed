"""Variants register like models and methods; the dispatcher finds them before and after their import."""

from __future__ import annotations

import subprocess
import sys

from kdexp.variants import VARIANTS, experiment_kind, variant_names, variant_run

KNOWN = {"standard", "ensemble", "chain", "born_again", "mutual", "augmented", "quantized", "policy"}


def test_every_variant_is_known_by_name_with_only_the_package_imported():
    code = ("import sys, kdexp.variants as v; print(sorted(v.variant_names())); "
            "print(any(m.startswith('kdexp.variants.') for m in sys.modules))")
    names, imported = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                     check=True).stdout.splitlines()
    assert set(eval(names)) == KNOWN and imported == "False"


def test_dispatch_imports_the_chosen_variant_and_runs_its_registered_function():
    assert experiment_kind({}) == "standard" and experiment_kind({"variant": {"name": "chain"}}) == "chain"
    run = variant_run("standard")
    assert "standard" in VARIANTS and run is VARIANTS.get("standard") and run.__module__ == "kdexp.variants.standard"
    assert set(variant_names()) == KNOWN


def test_an_unknown_or_explicit_standard_variant_is_one_config_error():
    import pytest

    from kdexp.config.errors import ConfigError

    for node in ({"name": "nope"}, {"name": "standard"}):
        with pytest.raises(ConfigError, match="variant.name=.* is invalid: choose one of: augmented, born_again"):
            experiment_kind({"variant": node})
