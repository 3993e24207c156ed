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
    ("recipe.lr=-1", "recipe.lr=-1.0 is invalid: must be a number > 0"),
    ("distill.weights.kd=-1", "distill.weights.kd=-1.0 is invalid"),
    ("trainer.max_epochs=0", "trainer.max_epochs=0 is invalid"),
    ("eval.latency_repeats=0", "eval.latency_repeats=0 is invalid: must be an integer >= 1"),
    ("teacher.arch=resnet9000", "teacher.arch='resnet9000' is invalid: unknown model; choose one of: "),
    ("data.name=imagenet", "data.name='imagenet' is invalid: unknown data set"),
    ("teacher.ckpt=/no/such/file.pt", "teacher.ckpt='/no/such/file.pt' is invalid: no such file"),
    ("teacher.label_smoothing=1.5", "teacher.label_smoothing=1.5 is invalid: must be a number in [0, 1)"),
])
def test_bad_values_are_rejected_without_heavy_imports(tmp_path, override, message):
    done = subprocess.run([sys.executable, "-c", RUN, override], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2, done.stderr[-2000:]
    assert message in done.stderr and "must not be imported" not in done.stderr


@pytest.mark.parametrize("overrides, key", [
    (["variant=born_again", "variant.generations=abc"], "variant.generations"),
    (["variant=chain", "variant.generations=abc"], "variant.generations"),  # chain has no such key
    (["variant=policy", "variant.ppo.lr=fast"], "variant.ppo.lr"),
    (["variant=ensemble", "teacher.weights=[1,heavy]"], "teacher.weights"),
    (["variant=mutual", "variant.weights.kl=x"], "variant.weights.kl"),
    (["tune.n_trials=abc"], "tune.n_trials"),
    (["teacher.augment=maybe"], "teacher.augment"),
    (["tune.sampler.seed=x"], "tune.sampler.seed"),
])
def test_a_wrong_type_in_a_kind_or_tune_fails_while_composing(tmp_path, overrides, key):
    done = subprocess.run([sys.executable, "-c", RUN, *overrides], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2, done.stderr[-2000:]
    (line,) = done.stderr.strip().splitlines()  # Hydra's several lines, as one (kdexp.config.compose_errors)
    assert line.startswith(f"kdexp-train: error: {key}") and "is invalid: " in line


@pytest.mark.parametrize("overrides, message", [
    (["variant=born_again", "variant.generations=0"], "variant.generations=0 is invalid: must be an integer >= 1"),
    (["variant=born_again", "variant.ensemble_combine=median"],
     "variant.ensemble_combine='median' is invalid: choose one of: mean_logits, mean_probs"),
    (["variant=chain", "variant.assistants=[nope]"], "variant.assistants[0]='nope' is invalid: an architecture name"),
    (["variant=mutual", "variant.temperature=0"], "variant.temperature=0.0 is invalid: must be a number > 0"),
    (["variant=mutual", "+variant.weights.kd=1"], "variant.weights.kd is invalid: unknown key; choose one of: ce, kl"),
    (["variant=augmented", "variant.policy=cutout"], "variant.policy='cutout' is invalid: choose one of: mixup"),
    (["variant=quantized", "variant.backend=arm"], "variant.backend='arm' is invalid: choose one of: x86"),
    (["variant=policy", "variant.student_hidden=[16,0]"], "variant.student_hidden[1]=0 is invalid: must be an "
                                                          "integer > 0"),
    (["variant=policy", "variant.student.temperature=0"], "variant.student.temperature=0.0 is invalid"),
    (["variant=ensemble", "teacher.combine=median"], "teacher.combine='median' is invalid: choose one of"),
    (["tune.train_batches=2"], "tune.train_batches=2.0 is invalid: must be a number in (0, 1]"),
    (["tune.metric=student/test_top1"], "tune.metric='student/test_top1' is invalid: choose one of: student/val_acc"),
])
def test_a_bad_kind_or_tune_value_is_one_line_before_heavy_imports(tmp_path, overrides, message):
    done = subprocess.run([sys.executable, "-c", RUN, *overrides], cwd=tmp_path, capture_output=True, text=True,
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
