"""lightning-hydra-template's habits: trainer=cpu|gpu|ddp|mps, hparams_search=<sweep>, debug=<preset>, tags=[...]
and +tracking.tags.*; the MLflow conventions a run carries (source/user tags, user tags, trial run names)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf, open_dict

from kdexp.config.matrix_keys import apply_matrix_keys
from kdexp.config.store import register_configs
from kdexp.config.validate import validate_config
from kdexp.tracking.runs import source_tags, user_tags
from tests.conftest import CONF_DIR


def compose_hydra(overrides: list[str]):
    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("train", overrides=overrides, return_hydra_config=True)


def app(cfg) -> dict:
    cfg = cfg.copy()
    with open_dict(cfg):
        del cfg["hydra"]
    conf = OmegaConf.to_container(cfg, resolve=True)
    apply_matrix_keys(conf)
    return conf


@pytest.mark.parametrize(("name", "expected"), [
    ("cpu", {"accelerator": "cpu", "devices": 1}),
    ("gpu", {"accelerator": "gpu", "devices": 1, "precision": "bf16-mixed"}),
    ("mps", {"accelerator": "mps", "devices": 1}),
    ("ddp", {"accelerator": "gpu", "devices": 4, "strategy": "ddp", "sync_batchnorm": True}),
])
def test_trainer_presets_are_the_default_recipe_on_another_device(name, expected):
    trainer, default = app(compose_hydra([f"trainer={name}"]))["trainer"], app(compose_hydra([]))["trainer"]
    assert {k: trainer[k] for k in expected} == expected
    assert {k: v for k, v in trainer.items() if k not in expected} == {
        k: v for k, v in default.items() if k not in expected}  # max_epochs etc. stay the default's


def test_hparams_search_is_the_sweep_file_under_the_template_name():
    via_template, via_sweep = compose_hydra(["hparams_search=kd_temperature"]), compose_hydra(["+sweep=kd_temperature"])
    assert app(via_template) == app(via_sweep)
    assert via_template.hydra.sweeper == via_sweep.hydra.sweeper
    assert via_template.hydra.sweeper._target_.endswith("KdexpOptunaSweeper")


@pytest.mark.parametrize(("preset", "trainer"), [
    ("default", {"max_epochs": 1, "accelerator": "cpu", "detect_anomaly": True}),
    ("fdr", {"max_epochs": 1, "fast_dev_run": True}),
    ("limit", {"max_epochs": 3, "limit_train_batches": 0.05, "limit_val_batches": 0.1}),
    ("overfit", {"max_epochs": 20, "overfit_batches": 3}),
])
def test_debug_presets_are_small_deltas_that_validate(preset, trainer):
    conf = app(compose_hydra([f"debug={preset}", "data=digits"]))
    assert {k: conf["trainer"][k] for k in trainer} == trainer
    assert conf["teacher"]["max_epochs"] == trainer["max_epochs"] and conf["tracking"]["experiment"] == "debug"
    validate_config(conf)


def test_debug_wins_over_a_machine_local_file_and_the_command_line_over_debug():
    conf = app(compose_hydra(["debug=limit", "trainer.max_epochs=2"]))
    assert conf["trainer"]["max_epochs"] == 2 and conf["trainer"]["limit_train_batches"] == 0.05


def test_user_tags_from_the_list_and_the_tracking_node():
    conf = app(compose_hydra(["tags=[dev,mnist]", "+tracking.tags.note=rerun", "+tracking.tags.team.name=kd"]))
    assert user_tags(conf["tracking"], conf["tags"]) == {"note": "rerun", "team.name": "kd", "tags": "dev, mnist"}
    assert user_tags(app(compose_hydra([]))["tracking"], []) == {}


def test_source_tags_fill_mlflow_user_and_source_columns():
    tags = source_tags()
    assert tags["mlflow.source.type"] == "LOCAL" and tags["mlflow.source.name"] == Path(sys.argv[0]).name
    assert tags["mlflow.user"]


@pytest.mark.slow
def test_a_debug_run_carries_user_source_and_template_tags(tmp_path):
    from mlflow import MlflowClient

    root = tmp_path / "out"
    env = {**os.environ, "KDEXP_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    cmd = [str(Path(sys.executable).parent / "kdexp-train"), "debug=fdr", "data=synthetic", "data.num_samples=200",
           "data.image_size=8", "teacher=cnn_small", "student=cnn_tiny", "baseline=false", f"paths.root={root}",
           "tags=[dev,smoke]", "+tracking.tags.note=first-try", "tracking.log_model=false",
           "tracking.export_student=false"]
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("debug").experiment_id])
    assert {r.data.tags["kdexp.role"] for r in runs} == {"teacher", "student"}
    for run in runs:
        tags = run.data.tags
        assert (tags["tags"], tags["note"]) == ("dev, smoke", "first-try")
        assert tags["mlflow.source.name"] == "kdexp-train" and tags["mlflow.source.type"] == "LOCAL"
        assert tags["mlflow.user"] and not any(k.startswith("system/") for k in run.data.metrics)  # off in tests


def test_system_metrics_without_psutil_are_off_with_one_warning(tmp_path, monkeypatch, caplog):
    import builtins

    import kdexp.tracking.runs as runs

    real_import = builtins.__import__

    def no_psutil(name, *args, **kwargs):
        if name == "psutil":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_psutil)
    monkeypatch.setattr(runs._psutil, "said", False, raising=False)
    trackers = [runs.Tracker(f"sqlite:///{tmp_path}/mlflow.db", "e", system_metrics=True) for _ in range(2)]
    assert not any(t.system_metrics for t in trackers)
    assert [r.message for r in caplog.records].count(
        "tracking.system_metrics: MLflow's system metrics need psutil (pip install psutil); runs are recorded "
        "without them") == 1
    run_id = trackers[0].start("r", {})
    assert trackers[0]._monitors == {} and trackers[0].client.get_run(run_id).data.metrics == {}
