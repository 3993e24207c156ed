"""kdexp_optuna sweeper, in-process parts: grammar, override formatting, job outcomes, callback."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import optuna
import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobReturn, JobStatus
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from kdexp.sweep.outcomes import job_outcome
from kdexp.sweep.search_space import format_value, grid_search_space, param_overrides, parse_search_space

APP_DIR = Path(__file__).parents[1] / "sweep_app"


@pytest.mark.parametrize(
    "override, expected",
    [
        ("lr=interval(0.1,2)", FloatDistribution(0.1, 2.0)),
        ("lr=tag(log, interval(1e-4, 1e-1))", FloatDistribution(1e-4, 1e-1, log=True)),
        ("n=int(interval(1, 5))", IntDistribution(1, 5)),
        ("n=tag(log, int(interval(1, 64)))", IntDistribution(1, 64, log=True)),
        ("n=range(2, 10, 2)", IntDistribution(2, 10, step=2)),  # high included, as in the official plugin
        ("t=range(0.5, 5.5, step=1)", FloatDistribution(0.5, 5.5, step=1.0)),
        ("o=choice(adam, sgd, 1, 2.5, true)", CategoricalDistribution(["adam", "sgd", 1, 2.5, True])),
        ("o=adam,sgd", CategoricalDistribution(["adam", "sgd"])),
    ],
)
def test_grammar_gives_optuna_distributions(override, expected):
    space = parse_search_space([override])
    assert list(space.distributions.values()) == [expected]
    assert space.fixed == {}


def test_shuffled_range_is_categorical_and_plain_values_are_fixed():
    space = parse_search_space(["a=shuffle(range(1,4))", "epochs=3", "+extra=x y", "~gone"])
    assert sorted(space.distributions["a"].choices) == [1, 2, 3]
    assert space.fixed_overrides() == ["epochs=3", "+extra=x\\ y", "~gone"]


def test_command_line_overrides_yaml_params_and_fixed_wins():
    yaml = param_overrides({"x": "interval(0,1)", "y": "choice(a,b)", "epochs": 3})
    space = parse_search_space(yaml + ["y=b", "x=interval(0,2)"])
    assert space.distributions == {"x": FloatDistribution(0.0, 2.0)}
    assert space.fixed_overrides() == ["epochs=3", "y=b"]
    assert space.texts == {"x": "interval(0,2)"}


@pytest.mark.parametrize(
    "value",
    [
        "1",
        "a b",
        "null",
        "true",
        "it's",
        "a,b",
        "sqlite:////tmp/x.db",
        "student/val_acc",
        "",
        1e-05,
        0.1,
        3.0,
        -2,
        True,
        None,
        float("inf"),
    ],
)
def test_values_are_written_so_hydra_parses_them_back(value):
    parsed = OverridesParser.create().parse_override(f"k={format_value(value)}").value()
    assert type(parsed) is type(value) and parsed == value


def test_trial_overrides_keep_choice_text_and_prefixes():
    space = parse_search_space(["+opt=choice('1', [1,2], b)", "lr=interval(0,1)"])
    assert list(space.distributions) == ["+opt", "lr"]  # named by the override key, as the official plugin does
    overrides = space.trial_overrides({"+opt": "[1,2]", "lr": 0.1})
    assert overrides == ["+opt=[1,2]", "lr=0.1"]
    assert space.trial_overrides({"+opt": "1", "lr": 0.5})[0] == "+opt='1'"
    # a param a custom_search_space suggested (not in the space) is passed as its own override
    assert space.trial_overrides({"+opt": "1", "lr": 0.5, "+w": 0.25})[2] == "+w=0.25"


def test_grid_space_needs_finite_params():
    grid = grid_search_space(
        parse_search_space(["a=choice(x,y)", "b=range(0,1,0.25)", "c=int(interval(1,3))", "d=range(1,7,2)"])
    )
    # range() lists Hydra's range (end excluded), as the official plugin's grid does; an interval is closed
    assert grid == {"a": ["x", "y"], "b": [0.0, 0.25, 0.5, 0.75], "c": [1, 2, 3], "d": [1, 3, 5]}
    with pytest.raises(ValueError, match="sampler 'grid' needs a finite space, but 'lr'"):
        grid_search_space(parse_search_space(["lr=interval(0,1)"]))


def _ret(status: JobStatus, value) -> JobReturn:
    ret = JobReturn()
    ret.status, ret.return_value = status, value
    return ret


def _raised(exc: BaseException) -> BaseException:
    try:
        raise exc
    except BaseException as caught:  # noqa: BLE001
        return caught


def test_job_outcomes():
    metrics = ["student/val_acc"]
    ok = job_outcome(_ret(JobStatus.COMPLETED, {"student/val_acc": 0.5, "other": 1}), metrics)
    assert (ok.state, ok.values) == (TrialState.COMPLETE, [0.5])
    assert job_outcome(_ret(JobStatus.COMPLETED, 0.25), metrics).values == [0.25]
    for bad in ({"loss": 1.0}, {"student/val_acc": float("nan")}, {"student/val_acc": float("-inf")}, None):
        assert job_outcome(_ret(JobStatus.COMPLETED, bad), metrics).state == TrialState.FAIL
    failed = job_outcome(_ret(JobStatus.FAILED, _raised(RuntimeError("boom"))), metrics)
    assert (
        failed.state == TrialState.FAIL and failed.reason == "RuntimeError: boom" and "boom" in failed.details
    )
    pruned = pickle.loads(pickle.dumps(optuna.TrialPruned("epoch 2")))  # as joblib hands it back
    assert job_outcome(_ret(JobStatus.FAILED, pruned), metrics).state == TrialState.PRUNED
    wrapped = RuntimeError("fit failed")
    wrapped.__cause__ = optuna.TrialPruned()
    assert job_outcome(_ret(JobStatus.FAILED, wrapped), metrics).state == TrialState.PRUNED
    two = job_outcome(_ret(JobStatus.COMPLETED, {"a": 1, "b": 2}), ["a", "b"])
    assert two.values == [1.0, 2.0]


def test_config_store_and_defaults():
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(APP_DIR), version_base="1.3"):
        cfg = compose("config", overrides=["hydra/sweeper=kdexp_optuna"], return_hydra_config=True)
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("KdexpOptunaSweeper")
    # the official plugin's defaults
    assert sweeper.sampler._target_ == "optuna.samplers.TPESampler" and sweeper.sampler.seed is None
    assert cfg.hydra.runtime.choices["hydra/sweeper/sampler"] == "tpe"
    assert sweeper.direction == "minimize" and sweeper.storage is None and sweeper.study_name is None
    assert (sweeper.n_trials, sweeper.n_jobs, sweeper.max_failure_rate) == (20, 2, 0.0)
    assert sweeper.params is None and sweeper.search_space is None and sweeper.custom_search_space is None
    # kdexp's extras, off or neutral unless asked for
    assert sweeper.pruner.name == "median" and sweeper.objectives is None and sweeper.max_failures is None
    assert sweeper.mlflow is None


def test_job_side_helpers_outside_a_sweep():
    from omegaconf import OmegaConf

    from kdexp.sweep.trial import child_run_tags, trial_from_cfg

    cfg = OmegaConf.load(APP_DIR / "config.yaml")
    assert trial_from_cfg(cfg) is None and child_run_tags(cfg) == {}
    assert trial_from_cfg({"optuna_trial": None}) is None and trial_from_cfg({}) is None


def test_job_side_helpers_inside_a_sweep_accept_dicts(tmp_path):
    from kdexp.sweep.trial import PRUNER_ATTR, child_run_tags, trial_from_cfg

    url = f"sqlite:///{tmp_path}/optuna.db"
    study = optuna.create_study(storage=url, study_name="s", direction="maximize")
    study.set_user_attr(PRUNER_ATTR, {"name": "median", "n_startup_trials": 0, "n_warmup_steps": 0})
    done = study.ask()
    done.report(1.0, 0)
    study.tell(done, 1.0)
    running = study.ask()
    cfg = {
        "optuna_trial": {
            "storage": url,
            "study_name": "s",
            "trial_number": running.number,
            "trial_id": running._trial_id,
            "parent_run_id": "abc",
        }
    }  # the pipeline's plain dict
    trial = trial_from_cfg(cfg)
    assert trial.number == running.number and isinstance(trial.study.pruner, optuna.pruners.MedianPruner)
    trial.report(0.1, 0)
    assert trial.should_prune()  # the study's pruner, rebuilt job-side from the stored spec
    assert child_run_tags(cfg) == {
        "optuna.study_name": "s",
        "optuna.trial_number": "1",
        "mlflow.parentRunId": "abc",
    }


def test_official_results_without_named_objectives():
    """Official semantics: a number for one objective, a tuple/list for several; a dict needs objectives."""
    from kdexp.config.errors import ConfigError

    assert job_outcome(_ret(JobStatus.COMPLETED, 2.5), None).values == [2.5]
    assert job_outcome(_ret(JobStatus.COMPLETED, (1, 2.5)), None, 2).values == [1.0, 2.5]
    assert job_outcome(_ret(JobStatus.COMPLETED, [1.0]), None, 2).state == TrialState.FAIL  # one of two
    assert job_outcome(_ret(JobStatus.COMPLETED, "x"), None).state == TrialState.FAIL
    with pytest.raises(ConfigError, match=r"returned a dict \(keys: acc\).*objectives=\[\{metric:acc,direction"):
        job_outcome(_ret(JobStatus.COMPLETED, {"acc": 1.0}), None)


def test_directions_from_direction_or_objectives():
    from hydra_plugins.kdexp_optuna_sweeper.config import Direction
    from kdexp.config.errors import ConfigError
    from kdexp.sweep.engine import directions_and_metrics

    assert directions_and_metrics({}) == (["minimize"], None)
    assert directions_and_metrics({"direction": ["maximize", Direction.minimize]}) == (["maximize", "minimize"], None)
    objectives = [{"metric": "a", "direction": "maximize"}, {"metric": "b", "direction": "minimize"}]
    assert directions_and_metrics({"objectives": objectives}) == (["maximize", "minimize"], ["a", "b"])
    with pytest.raises(ConfigError, match="contradicts"):
        directions_and_metrics({"objectives": objectives, "direction": "maximize"})
    with pytest.raises(ConfigError, match=r"direction=\['up'\]: choose minimize or maximize"):
        directions_and_metrics({"direction": "up"})


def test_samplers_from_the_group_target_or_short_name():
    from kdexp.config.errors import ConfigError
    from kdexp.sweep.factories import build_sampler, describe_sampler, sampler_spec
    from kdexp.sweep.samplers import SAMPLERS

    tpe = build_sampler(sampler_spec({**SAMPLERS["tpe"], "seed": 3, "constant_liar": False, "n_startup_trials": 4}), 2)
    assert isinstance(tpe, optuna.samplers.TPESampler)
    assert (tpe._constant_liar, tpe._n_startup_trials) == (False, 4)
    assert tpe._rng.rng.randint(10**9) == np.random.RandomState(5).randint(10**9)  # seed 3 + 2 trials done
    assert describe_sampler(sampler_spec({"name": "random", "seed": 0})) == "RandomSampler(seed=0)"
    qmc = build_sampler(sampler_spec({**SAMPLERS["qmc"], "qmc_type": "halton"}))
    assert isinstance(qmc, optuna.samplers.QMCSampler) and qmc._qmc_type == "halton"
    for name in ("random", "nsgaii", "motpe", "qmc"):
        assert isinstance(build_sampler(sampler_spec(SAMPLERS[name])), optuna.samplers.BaseSampler)
    grid = build_sampler(sampler_spec(SAMPLERS["grid"]), grid={"x": [1, 2]})
    assert isinstance(grid, optuna.samplers.GridSampler)
    with pytest.raises(ConfigError, match=r"^hydra.sweeper.sampler.name=bayes: unknown sampler; choose one of: tpe, "):
        sampler_spec({"name": "bayes"})
    with pytest.raises(ConfigError, match=r"_target_=collections.OrderedDict: not an Optuna sampler; choose .*grid"):
        sampler_spec({"_target_": "collections.OrderedDict"})
    with pytest.raises(ConfigError, match=r"n_startup: not an argument of TPESampler; it takes: .*constant_liar"):
        sampler_spec({**SAMPLERS["tpe"], "n_startup": 3})
    from kdexp.sweep.factories import pruner_spec

    with pytest.raises(ConfigError, match=r"^hydra.sweeper.pruner.name=asha: unknown pruner; choose one of: median, "):
        pruner_spec({"name": "asha"}, 1)
