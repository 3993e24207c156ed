"""A misspelled key of any node, and anything Hydra cannot compose, is one line and exit 2 from the real
`kdexp-train`, before any store exists; every legitimate config still validates."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from kdexp.config.errors import ConfigError
from kdexp.config.parse import parse_config
from kdexp.config.validate import validate_config
from kdexp.config.variants import KINDS
from tests.config.test_fail_fast import RUN
from tests.conftest import CONF_DIR, compose_train

TEACHER_KEYS = "arch, kwargs, ckpt, max_epochs, seed, augment, label_smoothing"


def kdexp_train(tmp_path: Path, *args: str, light: bool = True) -> subprocess.CompletedProcess:
    """kdexp-train with `args` in tmp_path (store under tmp_path/out); `light`: torch, Lightning and MLflow
    made unimportable (tests/config/test_fail_fast.py)."""
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    command = [sys.executable, "-c", RUN] if light else [str(Path(sys.executable).parent / "kdexp-train")]
    return subprocess.run([*command, *args, f"paths.root={tmp_path / 'out'}"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)


def one_line(done: subprocess.CompletedProcess, tmp_path: Path) -> str:
    """The only line kdexp-train printed, after checking exit 2 and that no MLflow store was created."""
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
    assert done.stdout.strip() == "" and len(done.stderr.strip().splitlines()) == 1, done.stderr[-3000:]
    assert not (tmp_path / "out" / "mlflow.db").exists()
    return done.stderr.strip()


@pytest.mark.parametrize("overrides, message", [
    (["student.foo=1"], "student.foo=1 is invalid: unknown key; valid keys: arch, kwargs"),
    (["teacher.max_epoch=3"],
     f"teacher.max_epoch=3 is invalid: unknown key; did you mean max_epochs? valid keys: {TEACHER_KEYS}"),
    (["student=hf", "student.hf_confg.num_hidden_layers=1"],
     "student.hf_confg={'num_hidden_layers': 1} is invalid: unknown key; did you mean hf_config? valid keys: "
     "arch, kwargs, hf_config, init_from_teacher"),
    (["variant=ensemble", "teacher.combin=mean_probs"],
     f"teacher.combin='mean_probs' is invalid: unknown key; did you mean combine? valid keys: {TEACHER_KEYS}, "
     "members, seeds, weights, combine"),
    (["++recipe.lrr=0.1"], "recipe.lrr=0.1 is invalid: unknown key; did you mean lr? valid keys: optimizer, lr, "),
    (["recipe.lrr=0.1"], "recipe.lrr=0.1 is invalid: unknown key; did you mean lr? valid keys: optimizer, lr, "),
    (["+eval.latency_repeat=3"], "eval.latency_repeat=3 is invalid: unknown key; did you mean latency_repeats, "),
])
def test_an_unknown_key_is_one_line_before_any_store_or_heavy_import(tmp_path, overrides, message):
    line = one_line(kdexp_train(tmp_path, *overrides), tmp_path)
    assert line.startswith(f"kdexp-train: error: {message}") and "must not be imported" not in line


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_every_kind_refuses_a_misspelled_model_key(kind):
    conf = OmegaConf.to_container(compose_train([f"variant={kind}", "student.kwarg={}"]), resolve=True)
    with pytest.raises(ConfigError) as err:
        validate_config(conf)
    assert str(err.value) == "student.kwarg={} is invalid: unknown key; did you mean kwargs? valid keys: arch, kwargs"


def test_hf_keys_belong_to_hf_models_only():
    conf = OmegaConf.to_container(compose_train(["+student.init_from_teacher=true"]), resolve=True)
    with pytest.raises(ConfigError, match=r"^student.init_from_teacher=True is invalid: unknown key; valid keys: "
                                          r"arch, kwargs$"):
        validate_config(conf)


@pytest.mark.slow
@pytest.mark.parametrize("override, message", [
    ("data.batch_sise=8", "data.batch_sise=8 is invalid: unknown key; did you mean batch_size"),
    ("distill.temprature=2", "distill.temprature=2 is invalid: not a key of distill=kd; did you mean temperature? "
                             "valid keys: name, temperature, weights"),
    ("+trainer.max_epoch=3", "trainer.max_epoch=3 is invalid: not a lightning.Trainer argument nor a kdexp switch "
                             "(compile, channels_last); did you mean max_epochs"),
])
def test_keys_checked_against_the_classes_are_one_line_before_any_store(tmp_path, override, message):
    """Data set options, method settings and Trainer arguments: read from the classes (torch is imported)."""
    line = one_line(kdexp_train(tmp_path, override, light=False), tmp_path)
    assert line.startswith(f"kdexp-train: error: {message}")


@pytest.mark.parametrize("overrides, message", [
    (["trainer=gpux"], "trainer=gpux: unknown trainer; choose one of: cpu, ddp, debug, default, gpu, mps"),
    (["data=foo"], "data=foo: unknown data; choose one of: cifar10, cifar100, digits, fashion_mnist, image_folder, "),
    (["+student=foo"], "student=foo: unknown student; choose one of: bert_l4, bert_l6, cnn_lean, cnn_medium, "),
    (["seed=[1,2"], "seed=[1,2: not a valid override (no viable alternative at input '[1,2'); grammar: https://"),
    (["seed=abc"], "seed='abc' is invalid: Value 'abc' of type 'str' could not be converted to Integer"),
    (["-m", "data=foo", "seed=0,1"], "data=foo: unknown data; choose one of: "),  # a multirun, before any job
    (["--cfg", "job", "data=foo"], "data=foo: unknown data; choose one of: "),
])
def test_what_hydra_cannot_compose_is_one_line_exit_2(tmp_path, overrides, message):
    line = one_line(kdexp_train(tmp_path, *overrides), tmp_path)
    assert line.startswith(f"kdexp-train: error: {message}")
    assert not (tmp_path / "out").exists()  # nor a run folder: nothing was composed


def test_help_and_cfg_job_still_work(tmp_path):
    shown = kdexp_train(tmp_path, "--cfg", "job", "seed=3")
    assert shown.returncode == 0 and OmegaConf.create(shown.stdout).seed == 3
    helped = kdexp_train(tmp_path, "--help")
    assert helped.returncode == 0 and "== Config groups (GROUP=OPTION) ==" in helped.stdout


@pytest.mark.parametrize("overrides, student", [
    (["variant=ensemble", "teacher.members=[cnn_small,{arch: cnn_tiny, seed: 3}]", "teacher.combine=mean_probs"],
     "cnn_tiny"),
    (["data=text_synthetic", "teacher=hf", "student=hf", "student.hf_config.num_hidden_layers=1",
      "student.init_from_teacher=true", "teacher.hf_config.hidden_size=32"], "hf"),
    (["data=text_synthetic", "teacher=hf", "student=hf", "student.arch=text_cnn"], "text_cnn"),  # inert hf keys
    (["teacher.augment=true", "teacher.label_smoothing=0.1", "+teacher.kwargs.width=8"], "cnn_tiny"),
    (["data=synthetic", "data.noise=0.5", "distill=dkd", "distill.beta=2", "+trainer.gradient_clip_val=1"],
     "cnn_tiny"),
    (["matrix=glue_sst2", "pair='hf->bert_l6'", "distill=kd"], "bert_l6"),
])
def test_legitimate_keys_validate(overrides, student):
    """Keys that appear only with some choices: an ensemble's members, `hf` models' keys, a teacher's own
    regularisation, a data set's and a method's options, Trainer arguments."""
    conf = parse_config(compose_train(overrides))  # validates it, after `pair` chose the models
    assert conf["student"]["arch"] == student


@pytest.mark.parametrize("overrides, message", [
    (["-m", "student.foo=1", "seed=0,1"], "student.foo=1 is invalid: unknown key; valid keys: arch, kwargs"),
    (["-m", "matrix=smoke", "teacher.max_epoch=3"], "teacher.max_epoch=3 is invalid: unknown key; did you mean "),
])
def test_a_multirun_refuses_a_misspelled_key_before_any_store_or_job(tmp_path, overrides, message):
    line = one_line(kdexp_train(tmp_path, *overrides, light=False), tmp_path)
    assert line.startswith(f"kdexp-train: error: {message}")
    assert not (tmp_path / "multirun").exists() and not (tmp_path / "out" / "multirun").exists()


@pytest.mark.parametrize("choice", [f"matrix={p.stem}" for p in sorted((CONF_DIR / "matrix").glob("*.yaml"))]
                         + [f"+sweep={p.stem}" for p in sorted((CONF_DIR.parent / "sweeps").glob("*.yaml"))])
def test_every_shipped_matrix_and_sweep_passes_the_multirun_key_check(choice):
    from omegaconf import OmegaConf

    from kdexp.config.keys import check_multirun_keys

    check_multirun_keys(OmegaConf.to_container(compose_train([choice]), resolve=False))
