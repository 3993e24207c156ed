"""Every config composes; every model is a valid teacher and student; bad values are rejected early."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from kdexp.config.errors import ConfigError
from kdexp.config.validate import validate_config
from kdexp.models import list_models
from tests.conftest import CONF_DIR, compose_train

GROUP_FILES = sorted(
    (p.parent.name, p.stem) for p in CONF_DIR.glob("*/*.yaml") if p.parent.name not in {"local", "sweep"}
)


@pytest.mark.parametrize("group, name", GROUP_FILES, ids=[f"{g}={n}" for g, n in GROUP_FILES])
def test_every_config_file_composes_and_validates(group, name):
    override = f"+experiment={name}" if group == "experiment" else f"{group}={name}"
    if group == "experiment":
        override = f"experiment={name}"
    if group == "search":  # not in train.yaml's defaults: added on the command line (+search=NAME)
        override = f"+search={name}"
    cfg = compose_train([override])
    conf = OmegaConf.to_container(cfg, resolve=True)
    validate_config(conf)


@pytest.mark.parametrize("arch", list_models())
def test_every_model_is_a_teacher_and_student_choice(arch):
    cfg = compose_train([f"teacher={arch}", f"student={arch}"])
    assert cfg.teacher.arch == arch and cfg.student.arch == arch
    assert cfg.teacher.max_epochs == cfg.trainer.max_epochs and cfg.teacher.ckpt is None


def test_defaults_are_the_documented_demo():
    cfg = compose_train()
    assert (cfg.data.name, cfg.distill.name, cfg.seed) == ("digits", "kd", 0)
    assert cfg.distill.weights == {"ce": 0.1, "kd": 0.9} and cfg.distill.temperature == 4.0
    assert cfg.tracking.uri == "sqlite:///outputs/mlflow.db" and cfg.paths.root == "outputs"


def test_tracking_uri_follows_the_environment(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert compose_train().tracking.uri == "http://127.0.0.1:5000"


def _conf(*overrides):
    return OmegaConf.to_container(compose_train(list(overrides)), resolve=True)


@pytest.mark.parametrize("overrides, message", [
    (["distill.temperature=0"], r"distill.temperature=0.0 is invalid: must be a number > 0"),
    (["distill.temperature=-2.5"], r"distill.temperature=-2.5 is invalid"),
    (["distill.weights.kd=-1"], r"distill.weights.kd=-1.0 is invalid: must be a number >= 0"),
    (["distill.weights.ce=0", "distill.weights.kd=0"], r"distill.weights=.* at least one weight must be > 0"),
    (["+distill.weights.fitnet=1"],
     r"distill.weights.fitnet=1.0 is invalid: unknown loss term; this method has: ce, kd"),
    (["teacher.arch=resnet9000"], r"teacher.arch='resnet9000' is invalid: unknown model; choose one of: .*resnet20"),
    (["student.arch=nope"], r"student.arch='nope' is invalid: unknown model"),
    (["data.name=imagenet"], r"data.name='imagenet' is invalid: unknown data set; choose one of: .*cifar10.*digits"),
    (["distill.name=magic"], r"distill.name='magic' is invalid: unknown method; choose one of: .*kd.*none"),
    (["trainer.max_epochs=0"], r"trainer.max_epochs=0 is invalid: must be an integer >= 1"),
    (["finetune.epochs=-1"], r"finetune.epochs=-1 is invalid"),
    (["recipe.lr=0"], r"recipe.lr=0.0 is invalid: must be a number > 0"),
    (["teacher.ckpt=/no/such/file.pt"], r"teacher.ckpt='/no/such/file.pt' is invalid: no such file"),
    (["distill=tinybert", "distill.init_epochs=0"],  # one stage, and its main-stage weights (0) would train no term
     r"distill.init_epochs=0 is invalid: with no first stage, tinybert needs a weight > 0 on one of its terms "
     r"\(hidden, attention\), e.g. distill.weights.hidden=1"),
    (["distill=ab", "distill.init_epochs=0"], r"distill.init_epochs=0 is invalid: with no first stage, ab needs"),
])
def test_bad_values_are_rejected_with_key_value_and_choices(overrides, message):
    with pytest.raises(ConfigError, match=message):
        validate_config(_conf(*overrides))


def test_unknown_group_choice_lists_options():
    from hydra.errors import MissingConfigException

    with pytest.raises(MissingConfigException, match="resnet32x4"):
        compose_train(["teacher=resnet9000"])


def test_conf_dir_is_the_repos(tmp_path):
    assert (Path(CONF_DIR) / "train.yaml").is_file()
