"""Bad input is rejected before torch, Lightning or any data are loaded: kdexp-train runs here with those
imports made impossible, and still answers each bad value with its one-line error (exit 2). Timings:
benchmarks/fail_fast.py."""

from __future__ import annotations

import subprocess
import sys

import pytest

BLOCKED = ("torch", "lightning", "mlflow", "sklearn")
RUN = f"""
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {BLOCKED!r}:
            raise ImportError("fail-fast test: " + name + " must not be imported before validation")
sys.meta_path.insert(0, Block())
sys.argv = ["kdexp-train", *sys.argv[1:]]
from kdexp.cli import train
train()
"""


@pytest.mark.parametrize("override, message", [
    ("distill.temperature=0", "distill.temperature=0.0 is invalid: must be a number > 0"),
    ("recipe.lr=-1", "recipe.lr=-1.0 is invalid: must be > 0"),
    ("distill.weights.kd=-1", "distill.weights.kd=-1.0 is invalid"),
    ("trainer.max_epochs=0", "trainer.max_epochs=0 is invalid"),
    ("eval.latency_repeats=0", "eval.latency_repeats=0 is invalid: must be an integer >= 1"),
    ("teacher.arch=resnet9000", "teacher.arch='resnet9000' is invalid: unknown model; choose one of: "),
    ("data.name=imagenet", "data.name='imagenet' is invalid: unknown data set"),
    ("teacher.ckpt=/no/such/file.pt", "teacher.ckpt='/no/such/file.pt' is invalid: no such file"),
])
def test_bad_values_are_rejected_without_heavy_imports(tmp_path, override, message):
    done = subprocess.run([sys.executable, "-c", RUN, override], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2, done.stderr[-2000:]
    assert message in done.stderr and "must not be imported" not in done.stderr


def test_names_read_from_the_source_match_the_registries():
    from kdexp.config.registry import declared_names
    from kdexp.data import list_datasets
    from kdexp.distill import list_methods
    from kdexp.models import list_models

    assert declared_names("kdexp.models", "register_model") == list_models()
    assert declared_names("kdexp.distill", "register_method") == list_methods()
    assert declared_names("kdexp.data", "DATASETS.register") == list_datasets()
