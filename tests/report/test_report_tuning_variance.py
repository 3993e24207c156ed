"""kdexp-report on a tuned matrix with study repeats (kdexp/report/tuned.py), on a hand-built MLflow store.

Pair t_a->s_a, seeds 0-2, two study repeats (tag kdexp.tune_repeat):
  tuned vanilla  r0 70/71/72, r1 72/73/74   -> repeat means 71, 73; tuning SD √2 = 1.41; seed SD (1+1)/2 = 1
  KD tuned       r0 80/82/84, r1 85/86/87   -> repeat means 82, 86; tuning SD √8 = 2.83; seed SD (2+1)/2 = 1.5
  AB tuned       r0 75/76/77 only           -> one repeat: no tuning SD; 45 student steps against 30 elsewhere
  untuned vanilla 60/61/62                  -> not the vanilla row of a tuned matrix
"""

from __future__ import annotations

import csv
import time

import pytest

from kdexp.report.cli import main

A = "t_a->s_a"
VANILLA_R = [{"student_recipe.lr": "0.001", "student_recipe.weight_decay": "0.0001",
              "student_recipe.label_smoothing": "0.05"},
             {"student_recipe.lr": "0.002", "student_recipe.weight_decay": "1e-05",
              "student_recipe.label_smoothing": "0.1"}]
KD_R = [{"distill.temperature": "2.0", "distill.weights.kd": "0.5", "distill.weights.ce": "0.5"},
        {"distill.temperature": "3.0", "distill.weights.kd": "0.9", "distill.weights.ce": "0.1"}]
AB_R = [{"distill.margin": "1.0", "distill.weights.ab": "0.5"}]
# (method, repeat or None when untuned, accuracies over seeds 0-2, settings, student steps, train seconds)
RUNS = [("none", 0, [0.70, 0.71, 0.72], VANILLA_R[0], 30, 2.0), ("none", 1, [0.72, 0.73, 0.74], VANILLA_R[1], 30, 2.0),
        ("kd", 0, [0.80, 0.82, 0.84], KD_R[0], 30, 3.0), ("kd", 1, [0.85, 0.86, 0.87], KD_R[1], 30, 5.0),
        ("ab", 0, [0.75, 0.76, 0.77], AB_R[0], 45, 6.0), ("none", None, [0.60, 0.61, 0.62], {}, 30, 1.0)]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    root = tmp_path_factory.mktemp("variance")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("bench", artifact_location=(root / "artifacts").as_uri())
    for method, repeat, values, params, steps, seconds in RUNS:
        for seed, value in enumerate(values):
            tags = {"kdexp.role": "student", "data": "synthetic", "teacher": "t_a", "student": "s_a",
                    "distill": method, "kdexp.method": method, "seed": str(seed), "kdexp.teacher_run_id": "t"}
            if repeat is not None:
                tags.update({"kdexp.tuned": "true", "kdexp.tune_repeat": str(repeat)})
            run = client.create_run(exp, tags=tags, start_time=int(time.time() * 1000))
            now = int(time.time() * 1000)
            metrics = {"student/test_top1": value, "teacher/test_top1": 0.9, "student/optimizer_steps": steps,
                       "student/train_seconds": seconds}
            client.log_batch(run.info.run_id, metrics=[Metric(k, v, now, 0) for k, v in metrics.items()],
                             params=[Param(k, v) for k, v in params.items()])
            client.set_terminated(run.info.run_id, "FINISHED")
    matrix = root / "m.yaml"
    matrix.write_text("tracking:\n  experiment: bench\ntune:\n  enabled: true\n  repeats: 2\nhydra:\n  sweeper:\n"
                      "    params:\n      pair: \"'t_a->s_a'\"\n      distill: none,kd,ab\n      seed: 0,1,2\n")
    return uri, matrix


@pytest.fixture(scope="module")
def report(store, tmp_path_factory):
    uri, matrix = store
    out = tmp_path_factory.mktemp("out")
    assert main(["--uri", uri, "--out", str(out), "--name", "r", "--no-plots", "--no-mlflow", "--matrix",
                 str(matrix)]) == 0
    rows = {(r["row"], r["pair"]): r for r in csv.DictReader(open(out / "r" / "results.csv", newline=""))}
    return (out / "r" / "table.md").read_text(), rows


def test_the_vanilla_row_of_a_tuned_matrix_is_the_tuned_vanilla_student(report):
    md, rows = report
    assert rows[("none", A)]["n"] == "6" and rows[("none", A)]["mean"] == "72.00"  # both repeats, not the 60s
    assert rows[("kd+tuned", A)]["delta_vs_vanilla"] == "+12.00"  # 84 - 72
    assert "- Student (vanilla) is the tuned vanilla student" in md
    assert "none+tuned" not in {row for row, _ in rows}


def test_tuning_sd_across_repeats_beside_seed_sd_within_them(report):
    md, rows = report
    section = md.split("## Tuning variance and budgets")[1].split("## Settings")[0]
    assert "| Student (vanilla) | t_a->s_a | 2 | 71.00 / 73.00 | 1.41 | 1.00 | 30 | 2.0 |" in section
    assert "| KD (tuned) | t_a->s_a | 2 | 82.00 / 86.00 | 2.83 | 1.50 | 30 | 4.0 |" in section
    assert "| AB (tuned) | t_a->s_a | 1 | 76.00 | – | 1.00 | 45 | 6.0 |" in section
    kd = rows[("kd+tuned", A)]
    assert (kd["tune_repeats"], kd["repeat_means"], kd["tuning_sd"], kd["seed_sd"]) == ("2", "82.0000;86.0000",
                                                                                          "2.83", "1.50")
    assert (kd["student_steps"], kd["train_seconds"]) == ("30", "4.00")
    assert rows[("ab+tuned", A)]["tuning_sd"] == "" and rows[("teacher", A)]["tune_repeats"] == ""


def test_rows_of_unequal_student_budgets_are_flagged(report):
    md, _ = report
    assert ("- ⚠ t_a->s_a: rows differ in student optimizer steps (Student (vanilla) 30, KD (tuned) 30, "
            "AB (tuned) 45).") in md


def test_the_settings_each_study_chose(report):
    md, rows = report
    settings = md.split("## Settings")[1]
    assert ("| KD (tuned) | r0: temperature=2, weights.kd=0.5, weights.ce=0.5; r1: temperature=3, weights.kd=0.9, "
            "weights.ce=0.1 |") in settings
    assert rows[("kd+tuned", A)]["study_settings"] == (
        "r0{distill.temperature=2.0;distill.weights.kd=0.5;distill.weights.ce=0.5}|"
        "r1{distill.temperature=3.0;distill.weights.kd=0.9;distill.weights.ce=0.1}")
    assert rows[("none", A)]["study_settings"].startswith("r0{student_recipe.lr=0.001;")


def test_with_study_repeats_every_run_enters_the_paired_test_once_paired_by_seed_and_repeat(report):
    from scipy import stats as sp

    _, rows = report
    kd = rows[("kd+tuned", A)]
    diffs = [10, 11, 12, 13, 13, 13]  # KD minus tuned vanilla at (seed, repeat): r0 80-70 ... r1 87-74
    assert (kd["test"], kd["n_compared"]) == ("paired-t", "6")
    assert float(kd["p_vs_vanilla"]) == pytest.approx(sp.ttest_1samp(diffs, 0).pvalue, rel=1e-3)
    ab = rows[("ab+tuned", A)]  # one repeat only: its 3 runs pair with the vanilla row's repeat 0
    assert (ab["test"], ab["n_compared"]) == ("welch", "3")
