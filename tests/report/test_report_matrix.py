"""Benchmark matrices: the pair axis, per-pair settings, per-student lr, cell keys, and every shipped matrix
file composing into valid cells (every pair x method builds, so a GPU run does not fail hours in)."""

from __future__ import annotations

import copy

import pytest
from omegaconf import OmegaConf

from kdexp.bench.matrix import MATRIX_DIR, cell_key, load_matrix
from kdexp.config.errors import ConfigError
from kdexp.config.matrix_keys import apply_matrix_keys, parse_pair, student_lr
from kdexp.config.parse import recipe_for
from kdexp.config.validate import validate_config
from kdexp.models import list_models
from tests.conftest import CONF_DIR, compose_train

MATRICES = sorted(p.stem for p in MATRIX_DIR.glob("*.yaml"))
KNOWN_NA = {("cifar100_crd_same", "wrn_40_2->wrn_40_1", "fsp")}  # FSP needs equal channels (N/A in the paper)


def conf(*overrides: str) -> dict:
    return OmegaConf.to_container(compose_train(list(overrides)), resolve=True)


def test_pair_sets_teacher_and_student_before_validation():
    c = conf("pair='cnn_small->mlp_small'")
    apply_matrix_keys(c)
    validate_config(c)
    assert (c["teacher"]["arch"], c["student"]["arch"], c["method"]) == ("cnn_small", "mlp_small", "kd")
    assert parse_pair(" resnet32x4 -> resnet8x4 ") == ("resnet32x4", "resnet8x4")


@pytest.mark.parametrize("bad", ["resnet32x4", "a->", "a->b->c"])
def test_malformed_pair_is_a_clear_error(bad):
    with pytest.raises(ConfigError, match=r"pair=.* is invalid: write it as 'teacher->student'"):
        parse_pair(bad)


def test_unknown_architecture_in_a_pair_is_caught_by_validation():
    c = conf("pair='cnn_small->nope'")
    apply_matrix_keys(c)
    with pytest.raises(ConfigError, match="student.arch='nope' is invalid"):
        validate_config(c)


def test_distill_overrides_all_pairs_then_the_pair_itself():
    c = conf("distill=dkd", "pair='cnn_small->cnn_tiny'")
    c["distill_overrides"] = {"*": {"dkd": {"warmup": 1, "beta": 4.0}, "kd": {"temperature": 9.0}},
                              "cnn_small->cnn_tiny": {"dkd": {"beta": 2.0}}, "x->y": {"dkd": {"beta": 99.0}}}
    apply_matrix_keys(c)
    assert (c["distill"]["warmup"], c["distill"]["beta"], c["distill"]["temperature"]) == (1, 2.0, 4.0)


def test_student_lr_is_for_the_listed_student_only_and_must_be_positive():
    c = conf("pair='cnn_small->mlp_small'", "+student_lr.mlp_small=0.01", "+student_lr.cnn_tiny=0.5")
    apply_matrix_keys(c)
    assert c["recipe"]["lr"] == 0.003 and student_lr(c, "mlp_small") == 0.01  # the config is never rewritten
    assert recipe_for(c, "student")["lr"] == 0.01 and recipe_for(c, "teacher")["lr"] == 0.003
    assert recipe_for(c, "student", "cnn_tiny")["lr"] == 0.5
    other = conf("+student_lr.mlp_small=0.01")
    assert recipe_for(other, "student")["lr"] == 0.003
    with pytest.raises(ConfigError, match=r"student_lr.cnn_tiny=0.0 is invalid"):
        apply_matrix_keys(conf("+student_lr.cnn_tiny=0"))


def keyed(*overrides: str) -> str:
    c = conf(*overrides)
    apply_matrix_keys(c)
    return cell_key(c)


def test_cell_key_ignores_paths_tracking_eval_and_bookkeeping():
    base = keyed("seed=1")
    assert base == keyed("seed=1", "paths.root=/elsewhere", "tracking.experiment=x", "eval.latency_repeats=3",
                         "skip_finished=true", "baseline=false", "data.root=/data", "+student_lr.resnet20=0.1",
                         "teacher_cache.mode=off")
    assert base == keyed("seed=1", "pair='cnn_medium->cnn_tiny'")  # the pair is its architectures


@pytest.mark.parametrize("change", ["seed=2", "distill=dkd", "pair='cnn_small->cnn_tiny'", "trainer.max_epochs=3",
                                    "+student_lr.cnn_tiny=0.1", "distill.temperature=2", "teacher.seed=5"])
def test_cell_key_changes_with_what_is_trained(change):
    assert keyed("seed=1") != keyed("seed=1", change)


@pytest.mark.parametrize("name", MATRICES)
def test_matrix_file_declares_its_axes_and_is_idempotent(name):
    spec = load_matrix(name)
    models = set(list_models())
    assert spec.pairs and all(set(parse_pair(p)) <= models for p in spec.pairs)
    assert all((CONF_DIR / "distill" / f"{m}.yaml").is_file() for m in spec.methods) and "none" in spec.methods
    assert len(spec.seeds) >= (2 if name == "smoke" else 3) and spec.experiment
    c = conf(f"matrix={name}")
    assert c["skip_finished"] is True and c["baseline"] is False
    assert isinstance(c["teacher"]["seed"], int)  # pinned: one teacher serves every seed


# Text matrices build their models from a tokenizer and text data: their pairs and methods are built in
# tests/distill/test_distill_text.py and run end to end in tests/e2e/test_text_cli.py.
IMAGE_MATRICES = [m for m in MATRICES if not m.startswith(("glue_", "text_"))]


@pytest.mark.slow
@pytest.mark.parametrize("name", IMAGE_MATRICES)
def test_every_cell_of_every_matrix_validates_and_builds(name):
    """Cells fail before training when a method cannot pair two architectures; check that up front."""
    from kdexp.distill import method_from_config
    from kdexp.models import create_model

    spec, failures = load_matrix(name), []
    data = conf(f"matrix={name}")["data"]["name"]
    input_shape, classes, num_train = {"cifar100": ((3, 32, 32), 100, 45000),
                                       "fashion_mnist": ((1, 28, 28), 10, 10000)}.get(data, ((3, 8, 8), 10, 240))
    shapes = {}  # pair -> (student, teacher) feature shapes, built once per pair
    for pair in spec.pairs:
        t, s = (create_model(a, num_classes=classes, in_channels=input_shape[0]) for a in parse_pair(pair))
        shapes[pair] = (s.feature_shapes(input_shape), t.feature_shapes(input_shape))
    for method in spec.methods:
        base = conf(f"matrix={name}", f"distill={method}")
        for pair in spec.pairs:
            c = copy.deepcopy(base)
            c["pair"] = pair
            apply_matrix_keys(c)
            validate_config(c)
            d = c["distill"]
            try:
                method_from_config(d).build(
                    *shapes[pair], classes, num_train)
            except ValueError as exc:
                if (name, pair, method) not in KNOWN_NA:
                    failures.append(f"{pair} {method}: {exc}")
    assert not failures


def test_a_method_version_bump_makes_its_finished_cells_train_again(monkeypatch):
    from kdexp.distill import METHODS

    before = keyed("distill=kd"), keyed("distill=crd")
    monkeypatch.setattr(METHODS.get("crd"), "version", 2)
    assert keyed("distill=kd") == before[0] and keyed("distill=crd") != before[1]


def test_settings_key_ignores_what_varies_across_cells_but_not_the_recipe():
    """kdexp.settings: equal for every cell of one matrix run, different when the shared settings change."""
    from kdexp.bench.matrix import settings_key

    def key(*overrides: str) -> str:
        c = conf("matrix=smoke", *overrides)
        apply_matrix_keys(c)
        return settings_key(c)

    same = key("distill=none", "seed=0")
    assert key("distill=kd", "seed=1", "paths.root=/elsewhere", "eval.latency_repeats=3") == same
    assert key("distill=kd", "pair='cnn_small->mlp_small'") == same
    assert key("trainer.max_epochs=3") != same and key("recipe.lr=0.01") != same and key("data.limit=50") != same
