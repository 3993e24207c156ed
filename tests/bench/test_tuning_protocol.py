"""The tuning protocol of tuned matrices (kdexp.bench.tuning, issue 22): trial seeds disjoint from evaluation
seeds, independent study repeats, a tuned vanilla control over the student's own recipe, matched student budgets.

Studies that a test does not need to run are built by hand in the Optuna store under the exact names the cell
asks for (finished: n_trials trials), so that the cell itself is all that trains.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from kdexp.bench import tuning
from kdexp.bench.matrix import cell_key
from kdexp.config.errors import ConfigError, MatrixError
from kdexp.config.parse import parse_config, recipe_for, thaw
from kdexp.sweep.search_space import param_overrides, parse_search_space
from tests.conftest import compose_train

TUNED = ["tune.enabled=true", "tune.n_trials=2", "tune.epochs=1", "tune.sampler.name=random",
         "tune.pruner.name=none", "teacher.seed=0", "baseline=false"]


def cell(*overrides: str) -> dict:
    """A cell's config as the orchestration sees it: parsed (matrix keys applied), then mutable."""
    return thaw(parse_config(OmegaConf.to_container(compose_train(list(overrides)), resolve=True)))


def finish_studies(conf: dict, chosen: list[dict[str, float]]) -> list[str]:
    """Study r of `conf`'s (pair, method), finished with n_trials trials at chosen[r] (validation 0.5 each)."""
    import optuna

    method = conf["method"]
    s = tuning.tune_settings(conf)
    distributions = parse_search_space(param_overrides(tuning.search_params(method))).distributions
    Path(conf["paths"]["root"]).mkdir(parents=True, exist_ok=True)
    names = []
    for repeat, params in enumerate(chosen):
        name = tuning.study_name(conf, tuning.repeat_settings(s, repeat), tuning.search_space(method))
        study = optuna.create_study(study_name=name, storage=f"sqlite:///{conf['paths']['root']}/optuna.db",
                                    direction="maximize")
        for _ in range(s["n_trials"]):
            study.add_trial(optuna.trial.create_trial(params=params, distributions=distributions, value=0.5))
        names.append(name)
    return names


# -- tuning seeds vs evaluation seeds ------------------------------------------------------------------------------

def test_trial_seeds_that_overlap_an_evaluation_seed_are_a_matrix_error(tmp_path):
    c = cell("distill=kd", "seed=3", "tune.enabled=true", "tune.seed=2", "tune.repeats=2",
             f"paths.root={tmp_path}")
    with pytest.raises(MatrixError, match=r"^tune.seed=2 \(trial seeds \[2, 3\], tune.repeats=2\) overlaps the "
                                          r"matrix's seeds \[3\] at \[3\]: set tune.seed outside them"):
        tuning.tune_cell(c)
    # allowed explicitly, or disjoint (the default tune.seed 1000): the check passes and the study is looked for
    for extra in ({"allow_seed_overlap": True}, {"seed": 1000}):
        with pytest.raises(RuntimeError, match="is not finished and no trial runner"):
            tuning.tune_cell({**c, "tune": {**c["tune"], **extra}})


@pytest.mark.slow
def test_kdexp_train_stops_a_matrix_whose_tuning_seeds_overlap_at_once_with_exit_2(tmp_path):
    root = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-c", "from kdexp.cli import train; train()", "-m", "matrix=smoke",
                           "tune.enabled=true", "tune.seed=1", f"paths.root={root}",
                           f"hydra.sweep.dir={tmp_path / 'multirun'}"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kdexp-train: error: tune.seed=1 (trial seeds [1], "
                                                   "tune.repeats=1) overlaps the matrix's seeds [0, 1] at [1]")
    assert "#1 :" not in proc.stdout  # the first cell stopped the matrix: no later cell was launched
    models = root / "cache" / "models"  # made empty by the launching process (kdexp.tracking.prepare_hydra)
    assert not models.exists() or not any(models.iterdir())  # nothing trained, not even the teacher


# -- study repeats ---------------------------------------------------------------------------------------------------

def test_repeats_are_independent_studies_with_their_own_sampler_and_trial_seeds():
    c = cell("distill=kd", "tune.enabled=true", "tune.repeats=3")
    s, space = tuning.tune_settings(c), tuning.search_space("kd")
    studies = [tuning.repeat_settings(s, r) for r in range(3)]
    assert [r["seed"] for r in studies] == [1000, 1001, 1002] and tuning.trial_seeds(s) == [1000, 1001, 1002]
    assert [r["sampler"]["seed"] for r in studies] == [0, 1, 2]
    assert [tuning.trial_base(c, r)["seed"] for r in studies] == [1000, 1001, 1002]
    names = [tuning.study_name(c, r, space) for r in studies]
    assert len(set(names)) == 3
    single = tuning.tune_settings({**c, "tune": {**c["tune"], "repeats": 1}})
    assert tuning.study_name(c, tuning.repeat_settings(single, 0), space) == names[0]  # K=1 -> K=3 reuses it
    with pytest.raises(ConfigError, match="tune repeat 3 is invalid: tune.repeats=3 gives 0..2"):
        tuning.repeat_settings(s, 3)


def test_each_repeat_is_its_own_cell_tagged_with_the_repeat_and_keyed_by_it_only_when_repeats_exceed_one(tmp_path):
    same = {"distill.temperature": 2.0, "distill.weights.kd": 0.5, "distill.weights.ce": 0.5}
    two = cell("distill=kd", *TUNED, "tune.repeats=2", f"paths.root={tmp_path}")
    names = finish_studies(two, [same, same])  # two studies that happen to choose the same settings
    keys = []
    for repeat in (0, 1):
        c = thaw(two)
        tags = tuning.apply_tuning(c, repeat=repeat)
        assert tags["kdexp.tune_repeat"] == str(repeat) and tags["kdexp.tune.study"] == names[repeat]
        assert c["tune"]["repeat"] == repeat and c["distill"]["temperature"] == 2.0
        keys.append(cell_key(c))
    assert keys[0] != keys[1]  # same settings, still two cells

    one = cell("distill=kd", *TUNED, f"paths.root={tmp_path}")  # repeats=1: study 0 above, found finished
    c = thaw(one)
    assert tuning.apply_tuning(c)["kdexp.tune.study"] == names[0]
    assert "repeat" not in c["tune"]
    untuned = thaw(cell("distill=kd", *TUNED[5:], "distill.temperature=2.0", "distill.weights.kd=0.5",
                        "distill.weights.ce=0.5", f"paths.root={tmp_path}"))
    assert cell_key(c) == cell_key(untuned)  # the key of a single study's cell is what it trains, as before


# -- the tuned vanilla control ---------------------------------------------------------------------------------------

def test_the_vanilla_student_searches_its_own_recipe_never_the_teachers():
    space = tuning.search_space("none")
    assert set(space) == {"student_recipe.lr", "student_recipe.weight_decay", "student_recipe.label_smoothing"}
    c = cell("distill=none")
    probe = parse_config(tuning.apply_overrides(c, ["++student_recipe.lr=0.01", "++student_recipe.weight_decay=0.0",
                                                    "++student_recipe.label_smoothing=0.1"]))
    student, teacher = recipe_for(probe, "student"), recipe_for(probe, "teacher")
    assert (student["lr"], student["weight_decay"], student["label_smoothing"]) == (0.01, 0.0, 0.1)
    assert teacher == dict(c["recipe"]) and "label_smoothing" not in teacher
    assert cell_key(probe) != cell_key(c) and "student_recipe" not in c  # absent until set: old keys stay
    with pytest.raises(ConfigError, match=r"student_recipe.label_smoothing=1.5 is invalid: must be a number in "
                                          r"\[0, 1\)"):
        parse_config({**c, "student_recipe": {"label_smoothing": 1.5}})
    with pytest.raises(ConfigError, match="student_recipe.momentun=0.5 is invalid: a recipe key; choose from"):
        parse_config({**c, "student_recipe": {"momentun": 0.5}})


def test_label_smoothing_of_the_student_recipe_reaches_its_hard_label_loss():
    from kdexp.modules.distill import DistillModule

    logits, y = torch.randn(8, 10), torch.randint(0, 10, (8,))
    smoothed = DistillModule(torch.nn.Linear(4, 10), recipe={"optimizer": "adam", "lr": 1e-3, "label_smoothing": 0.1})
    plain = DistillModule(torch.nn.Linear(4, 10), recipe={"optimizer": "adam", "lr": 1e-3})
    x = torch.randn(8, 4)
    assert torch.equal(smoothed.augment_batch(x, y)[1](logits), F.cross_entropy(logits, y, label_smoothing=0.1))
    assert torch.equal(plain.augment_batch(x, y)[1](logits), F.cross_entropy(logits, y))


@pytest.mark.slow
def test_a_tuned_vanilla_study_trains_one_teacher_and_its_cells_train_at_the_chosen_recipe(tiny_overrides, tmp_path):
    import mlflow
    import optuna

    from kdexp.variants import run_experiment

    cfg = compose_train([*tiny_overrides, "distill=none", *TUNED])
    run_experiment(cfg, tmp_path / "run")
    root = tmp_path / "outputs"
    (summary,) = optuna.get_all_study_summaries(f"sqlite:///{root}/optuna.db")
    study = optuna.load_study(study_name=summary.study_name, storage=f"sqlite:///{root}/optuna.db")
    assert len(study.trials) == 2
    # the study names a param by its override key (++student_recipe.lr), as Hydra's official sweeper does
    assert all({k.lstrip("+") for k in t.params} == set(tuning.search_space("none")) for t in study.trials)
    assert len({t.params["++student_recipe.lr"] for t in study.trials}) == 2  # the trials differ in lr ...
    assert len(list((root / "cache" / "models").glob("*/model.pt"))) == 1  # ... and share one teacher

    client = mlflow.MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    (student,) = client.search_runs([client.get_experiment_by_name("kdexp").experiment_id],
                                    "tags.`kdexp.role` = 'student'")
    best, params = study.best_trial.params, student.data.params
    assert float(params["recipe.lr"]) == float(params["student_recipe.lr"]) == best["++student_recipe.lr"]
    assert float(params["recipe.label_smoothing"]) == best["++student_recipe.label_smoothing"]
    assert student.data.tags["kdexp.tuned"] == "true" and student.data.tags["kdexp.tune_repeat"] == "0"
    teachers = client.search_runs([e.experiment_id for e in client.search_experiments()],  # the first trial's
                                  "tags.`kdexp.role` = 'teacher'")
    assert len(teachers) == 1 and float(teachers[0].data.params["recipe.lr"]) == 0.003  # the recipe's, untuned


# -- matched budgets -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("method, extra, cell_epochs, trial_epochs", [
    ("kd", [], 3, 2),
    ("ab", ["distill.init_epochs=1"], 2, 1),  # AB's first stage trains the student: it comes out of the budget
    ("ab", ["distill.init_epochs=1", "tune.match_budget=false"], 3, 2),  # the matrix says otherwise
    ("ft", ["distill.init_epochs=1"], 3, 2),  # FT's first stage trains its paraphraser only
    ("tinybert", ["distill.init_epochs=1"], 2, 1),  # TinyBERT's intermediate-layer stage trains the student
    ("minilm", ["distill.init_epochs=1"], 2, 1),  # MiniLM's self-attention stage too
])
def test_an_init_stage_that_trains_the_student_takes_its_epochs_from_the_budget(method, extra, cell_epochs,
                                                                              trial_epochs):
    c = cell(f"distill={method}", "trainer.max_epochs=3", "tune.enabled=true", "tune.epochs=2", *extra)
    s = tuning.tune_settings(c)
    assert tuning.main_epochs(c, s, 3, "trainer.max_epochs") == cell_epochs
    assert tuning.trial_base(c, tuning.repeat_settings(s, 0))["trainer"]["max_epochs"] == trial_epochs


def test_a_matched_init_stage_keeps_the_tables_settings_key(tmp_path):
    """AB's shortened main stage is the same budget as KD's: the report must not warn of mixed settings."""
    from kdexp.bench.matrix import settings_key

    keys = {}
    ab = {"distill.margin": 1.0, "distill.weights.ab": 0.5}
    for method, chosen, extra in (("kd", KD_CHOSEN, []),
                                  ("ab", ab, ["distill.init_epochs=1"])):
        c = cell(f"distill={method}", "trainer.max_epochs=3", *TUNED, "tune.epochs=2", f"paths.root={tmp_path}", *extra)
        finish_studies(c, [chosen])
        tuning.apply_tuning(c)
        keys[method] = (c["trainer"]["max_epochs"], settings_key(c))
    assert keys["ab"][0] == 2 and keys["kd"][0] == 3
    assert keys["ab"][1] == keys["kd"][1]


def test_a_budget_that_cannot_be_matched_is_a_matrix_error(tmp_path):
    c = cell("distill=ab", "distill.init_epochs=3", "trainer.max_epochs=3", "tune.enabled=true", "tune.epochs=4",
             f"paths.root={tmp_path}")
    with pytest.raises(MatrixError, match=r"^distill.init_epochs=3 leaves no main-stage epoch of "
                                          r"trainer.max_epochs=3 \(ab in a matrix with matched budgets"):
        tuning.tune_cell(c)
    c["trainer"]["max_epochs"] = 5  # the cell fits now; a trial of 4 epochs would still not (tune.epochs)
    c["tune"]["epochs"] = 3
    with pytest.raises(MatrixError, match="leaves no main-stage epoch of tune.epochs=3"):
        tuning.trial_base(c, tuning.tune_settings(c))


KD_CHOSEN = {"distill.temperature": 2.0, "distill.weights.kd": 0.5, "distill.weights.ce": 0.5}


def tuned_student_steps(base: list[str], rows: dict, root) -> dict[str, int]:
    """Each row (method -> (its study's chosen settings, extra overrides)) trained as a tuned cell of 2 epochs:
    its student optimizer steps."""
    from kdexp.variants import run_experiment

    steps = {}
    for method, (chosen, extra) in rows.items():
        overrides = [*base, f"distill={method}", *TUNED, "trainer.max_epochs=2", "tune.epochs=2", *extra]
        finish_studies(cell(*overrides), [chosen])
        metrics = run_experiment(compose_train(overrides), root / method)
        steps[method] = metrics["student/optimizer_steps"]
        assert metrics["student/train_seconds"] > 0
    return steps


@pytest.mark.slow
def test_matched_rows_take_the_same_student_optimizer_steps(tiny_overrides, tmp_path):
    """A tuned AB cell (first stage 1 epoch) and a tuned KD cell, both of 2 epochs: the same student steps."""
    steps = tuned_student_steps(tiny_overrides, {"kd": (KD_CHOSEN, []), "ab": (
        {"distill.margin": 1.0, "distill.weights.ab": 0.5}, ["distill.init_epochs=1"])}, tmp_path)
    batches = 25  # synthetic: 1,000 samples, val_fraction 0.2, batch 32: 800 training images
    assert steps == {"kd": 2 * batches, "ab": 2 * batches}


@pytest.mark.slow
def test_an_untuned_matrix_matches_budgets_only_when_it_asks(tiny_overrides, tmp_path):
    """Untuned cells of 2 epochs: AB (first stage 1 epoch) with tune.match_budget=true takes KD's student steps
    and shares its settings tag; without it (null), the first stage comes on top, as before."""
    import mlflow

    from kdexp.variants import run_experiment

    runs = {}
    for label, method, extra in (("kd", "kd", ["tune.match_budget=true"]),
                                 ("ab", "ab", ["tune.match_budget=true", "distill.init_epochs=1"]),
                                 ("ab_on_top", "ab", ["distill.init_epochs=1", "tracking.experiment=on-top"])):
        overrides = [*tiny_overrides, f"distill={method}", "trainer.max_epochs=2", "teacher.seed=0",
                     "baseline=false", "tracking.export_student=false", "tracking.log_model=false", *extra]
        runs[label] = run_experiment(compose_train(overrides), tmp_path / label)["student/optimizer_steps"]
    batches = 25  # synthetic: 1,000 samples, val_fraction 0.2, batch 32: 800 training images
    assert runs == {"kd": 2 * batches, "ab": 2 * batches, "ab_on_top": 3 * batches}
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'outputs' / 'mlflow.db'}")
    students = client.search_runs([client.get_experiment_by_name("kdexp").experiment_id],
                                  "tags.`kdexp.role` = 'student'")
    by_method = {r.data.tags["kdexp.method"]: r for r in students}
    assert by_method["ab"].data.params["trainer.max_epochs"] == "1"  # the main stage, recorded as trained
    assert by_method["ab"].data.params["tune.budget_epochs"] == "2"
    assert by_method["ab"].data.tags["kdexp.settings"] == by_method["kd"].data.tags["kdexp.settings"]


@pytest.mark.slow
def test_a_matched_tinybert_row_takes_the_student_steps_of_a_kd_row(tmp_path):
    """Text: tuned TinyBERT (intermediate stage 1 epoch, prediction stage the rest) and tuned KD, both of 2 epochs."""
    pytest.importorskip("transformers", reason="the text extra (pip install kdexp[text])")
    text = ["data=text_synthetic", "data.num_samples=200", "data.num_test=60", "data.max_length=24", "teacher=hf",
            "student=hf", "student.hf_config.num_hidden_layers=1", "teacher.max_epochs=1", "eval.latency_repeats=2",
            "eval.latency_batch=8", "tracking.export_student=false", "tracking.log_model=false",
            f"paths.root={tmp_path / 'outputs'}"]
    steps = tuned_student_steps(text, {"kd": (KD_CHOSEN, []), "tinybert": (
        {"distill.temperature": 1.0, "++student_recipe.lr": 0.001}, ["distill.init_epochs=1"])}, tmp_path)
    batches = 6  # 200 samples, 10 % held out for validation: 180, batch 32
    assert steps == {"kd": 2 * batches, "tinybert": 2 * batches}
