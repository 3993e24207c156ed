"""The ready Optuna sweeps in sweeps/*.yaml (`kdexp-train -m +sweep=<name>`): they compose, their search
spaces parse into the intended Optuna distributions, a trial's overrides give a valid experiment, and the
matrices that share the folder (sweeps/matrix/) do not leak into the `sweep` group."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf, open_dict
from optuna.distributions import CategoricalDistribution, FloatDistribution

from kdexp.config.matrix_keys import apply_matrix_keys
from kdexp.config.store import register_configs
from kdexp.config.validate import validate_config
from kdexp.sweep.search_space import param_overrides, parse_search_space

CONF = Path(__file__).resolve().parents[2] / "conf"
SWEEPS = sorted(p.stem for p in (CONF.parent / "sweeps").glob("*.yaml"))
EXPECTED = {
    "kd_temperature": {
        "distill.temperature": FloatDistribution(1.0, 10.0),
        "distill.weights.kd": FloatDistribution(0.1, 1.0),
        "distill.weights.ce": FloatDistribution(0.1, 1.0),
    },
    "dkd": {
        "distill.alpha": FloatDistribution(0.25, 4.0),
        "distill.beta": FloatDistribution(0.5, 16.0, log=True),
        "distill.temperature": FloatDistribution(1.0, 8.0),
    },
    "kd_pareto": {
        "student": CategoricalDistribution(["cnn_tiny", "mlp_small", "cnn_small", "mlp_medium"]),
        "distill.temperature": FloatDistribution(1.0, 8.0),
    },
}


def compose_hydra(overrides: list[str]):
    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("train", overrides=overrides, return_hydra_config=True)


def app(cfg) -> dict:
    """The experiment's own config, resolved (what run_experiment gets), without the hydra node."""
    cfg = cfg.copy()
    with open_dict(cfg):
        del cfg["hydra"]
    return OmegaConf.to_container(cfg, resolve=True)


def sweeper(cfg) -> dict:
    return OmegaConf.to_container(cfg.hydra.sweeper, resolve=True)


def test_every_sweep_file_is_tested_and_only_they_are_sweep_choices():
    assert SWEEPS == sorted(EXPECTED)
    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        options = GlobalHydra.instance().config_loader().get_group_options("sweep")
    assert sorted(options) == SWEEPS  # sweeps/matrix/ is a subfolder, not a choice


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_sweep_composes_with_its_search_space(name):
    cfg = compose_hydra([f"+sweep={name}"])
    s = sweeper(cfg)
    assert s["_target_"].endswith("KdexpOptunaSweeper")
    assert cfg.hydra.runtime.choices["hydra/sweeper"] == "kdexp_optuna"
    assert (cfg.data.name, cfg.teacher.arch, cfg.student.arch) == ("fashion_mnist", "cnn_medium", "cnn_tiny")
    assert cfg.baseline is False and cfg.teacher.seed == 0
    assert cfg.data.limit and cfg.trainer.max_epochs <= 10 and s["n_trials"] >= 10
    assert s["storage"] == "sqlite:///outputs/optuna.db"
    assert s["study_name"].startswith(f"{name}-fashion_mnist-cnn_medium")
    space = parse_search_space(param_overrides(s["params"]))
    assert space.distributions == EXPECTED[name] and not space.fixed
    # kdexp's own behaviour, stated in the files where the official defaults differ
    assert (s["max_failure_rate"], s["max_failures"], s["sampler"]["seed"]) == (1.0, 3, 0)
    if len(s["objectives"]) > 1:
        assert cfg.hydra.runtime.choices["hydra/sweeper/sampler"] in ("nsgaii", "motpe")
        assert s["pruner"]["name"] == "none"
        # latency as a ratio to the teacher timed in the same blocks (docs/latency.md)
        assert {"metric": "student/latency_b1_ms_ratio", "direction": "minimize"} in s["objectives"]
    else:
        assert s["objectives"] == [{"metric": "student/val_acc", "direction": "maximize"}]
        assert cfg.hydra.runtime.choices["hydra/sweeper/sampler"] == "tpe"
        assert s["pruner"]["name"] == "median"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_a_trial_of_every_sweep_is_a_valid_experiment(name):
    """What the sweeper launches: the file, then a sampled point as overrides (here the lowest value, or the
    last choice: not the file's own student). A missing key, or a value the pipeline rejects, fails here."""
    s = sweeper(compose_hydra([f"+sweep={name}"]))
    space = parse_search_space(param_overrides(s["params"]))
    probe = {k: d.choices[-1] if hasattr(d, "choices") else d.low for k, d in space.distributions.items()}
    cfg = compose_hydra([f"+sweep={name}", *space.trial_overrides(probe)])
    conf = app(cfg)
    apply_matrix_keys(conf)
    validate_config(conf)
    for key, value in probe.items():
        assert (OmegaConf.select(cfg, key) if key != "student" else cfg.student.arch) == value


def test_command_line_overrides_win_and_rename_the_study(tmp_path):
    cfg = compose_hydra(["+sweep=kd_temperature", "data=digits", "student=mlp_small", "trainer.max_epochs=2",
                         f"paths.root={tmp_path}", "hydra.sweeper.n_trials=3"])
    s = sweeper(cfg)
    assert (cfg.data.name, cfg.student.arch, cfg.trainer.max_epochs) == ("digits", "mlp_small", 2)
    assert s["n_trials"] == 3 and cfg.teacher.max_epochs == 8  # the teacher keeps its own epochs
    assert s["study_name"] == "kd_temperature-digits-cnn_medium-mlp_small"
    assert s["storage"] == f"sqlite:///{tmp_path}/optuna.db"  # the study follows paths.root
    # A fixed command-line value takes a key out of the space (the sweeper parses params, then arguments).
    space = parse_search_space([*param_overrides(s["params"]), "distill.weights.ce=0.1"])
    assert "distill.weights.ce" not in space.distributions and space.fixed["distill.weights.ce"]


def test_a_matrix_reached_through_the_sweep_folder_is_just_that_matrix():
    """conf/sweep -> ../sweeps also exposes sweeps/matrix/ as `sweep/matrix/<name>`: harmless, since it
    composes exactly like `matrix=<name>` (same basic sweeper and axes), and never like an Optuna sweep."""
    via_sweep, direct = compose_hydra(["+sweep=matrix/smoke"]), compose_hydra(["matrix=smoke"])
    for part in ("sweeper", "launcher", "job_logging"):
        assert via_sweep.hydra[part] == direct.hydra[part]
    assert direct.hydra.sweeper._target_ == "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"
    assert app(via_sweep) == app(direct)
