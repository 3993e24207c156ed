"""kdexp-report: significance against the vanilla student (Welch's t-test on request), the settings each row ran with,
and paper settings vs tuned side by side, on a hand-built MLflow store.

Pair A (t_a->s_a), 3 seeds: vanilla 70/71/72; KD at paper settings 70.5/71.5/72.5 (within noise);
KD tuned (tag kdexp.tuned=true, T 2, kd 0.5, ce 0.7) 75/76/77 (beyond noise).
"""

from __future__ import annotations

import csv
import time

import pytest
from scipy.stats import ttest_ind

from kdexp.report.cli import main

A = "t_a->s_a"
PAPER = {"distill.temperature": "4.0", "distill.weights.kd": "0.9", "distill.weights.ce": "0.1"}
TUNED = {"distill.temperature": "2.0", "distill.weights.kd": "0.5", "distill.weights.ce": "0.7"}
RUNS = [("none", False, [0.70, 0.71, 0.72], {}), ("kd", False, [0.705, 0.715, 0.725], PAPER),
        ("kd", True, [0.75, 0.76, 0.77], TUNED)]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    root = tmp_path_factory.mktemp("tuned")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("bench", artifact_location=(root / "artifacts").as_uri())
    for method, tuned, values, params in RUNS:
        for seed, value in enumerate(values):
            tags = {"kdexp.role": "student", "data": "synthetic", "teacher": "t_a", "student": "s_a",
                    "distill": method, "kdexp.method": method, "seed": str(seed), "kdexp.teacher_run_id": "t"}
            if tuned:
                tags["kdexp.tuned"] = "true"
            run = client.create_run(exp, tags=tags, start_time=int(time.time() * 1000))
            now = int(time.time() * 1000)
            client.log_batch(run.info.run_id, metrics=[Metric("student/test_top1", value, now, 0),
                                                       Metric("teacher/test_top1", 0.9, now, 0)],
                             params=[Param(k, v) for k, v in params.items()])
            client.set_terminated(run.info.run_id, "FINISHED")
    return uri


def report(uri, out, *args):
    assert main(["--uri", uri, "--out", str(out), "--name", "r", "--no-plots", "--no-mlflow", *args]) == 0
    return (out / "r" / "table.md").read_text(), {(r["row"], r["pair"]): r for r in
                                                   csv.DictReader(open(out / "r" / "results.csv", newline=""))}


def test_significance_by_welchs_t_test_against_vanilla_holm_adjusted_and_marked(store, tmp_path):
    md, cells = report(store, tmp_path, "--experiment", "bench", "--test", "welch")  # the paired p: 0/0 here
    expected = ttest_ind([75, 76, 77], [70, 71, 72], equal_var=False).pvalue  # 0.0031
    assert float(cells[("kd+tuned", A)]["p_vs_vanilla"]) == pytest.approx(expected, rel=1e-3)
    assert float(cells[("kd+tuned", A)]["p_adjusted"]) == pytest.approx(2 * expected, rel=1e-3)  # Holm, 2 rows
    assert cells[("kd+tuned", A)]["significant"] == "1" and cells[("kd", A)]["significant"] == "0"
    assert float(cells[("kd", A)]["p_vs_vanilla"]) == pytest.approx(0.5734, abs=1e-3)
    assert cells[("none", A)]["p_vs_vanilla"] == "" and cells[("teacher", A)]["significant"] == "0"
    assert "| KD (tuned) | **76.00** ± 1.00 (+5.00)* |" in md and "| KD | 71.50 ± 1.00 (+0.50) |" in md
    assert "(Welch's t-test, two-sided; Holm's step-down correction over the methods of each column, " \
           "adjusted p < 0.05" in md


def test_settings_table_reads_the_searched_keys_from_run_params(store, tmp_path):
    md, cells = report(store, tmp_path, "--experiment", "bench")
    settings = md.split("## Settings")[1]
    assert "| KD | temperature=4, weights.kd=0.9, weights.ce=0.1 |" in settings
    assert "| KD (tuned) | temperature=2, weights.kd=0.5, weights.ce=0.7 |" in settings
    assert "Student (vanilla)" not in settings  # nothing of its own to tune
    assert cells[("kd+tuned", A)]["settings"] == "distill.temperature=2.0;distill.weights.kd=0.5;distill.weights.ce=0.7"


def test_paper_settings_and_tuned_side_by_side_with_delta(store, tmp_path):
    md, _ = report(store, tmp_path, "--experiment", "bench", "--paper-vs-tuned")
    section = md.split("## Paper settings vs tuned")[1].split("## Settings")[0]
    p = ttest_ind([75, 76, 77], [70.5, 71.5, 72.5], equal_var=False).pvalue
    assert f"| KD | 71.50 → 76.00 (+4.50, p={p:.3f})* |" in section
    assert "| ↳ settings | temperature=4, weights.kd=0.9, weights.ce=0.1 → temperature=2, weights.kd=0.5, " \
           "weights.ce=0.7 |" in section


def test_a_tuned_matrix_shows_its_tuned_rows_and_both_on_request(store, tmp_path):
    matrix = tmp_path / "m.yaml"
    matrix.write_text("tracking:\n  experiment: bench\ntune:\n  enabled: true\nhydra:\n  sweeper:\n    params:\n"
                      "      pair: \"'t_a->s_a'\"\n      distill: none,kd\n      seed: 0,1,2\n")
    md, cells = report(store, tmp_path, "--matrix", str(matrix))
    assert {row for row, _ in cells} == {"teacher", "none", "kd+tuned"}
    # the paper-setting KD runs, and the untuned vanilla ones: a tuned matrix's vanilla row is its tuned
    # vanilla student, which this store lacks (so the row is missing, not replaced by an untuned one)
    assert "6 run(s) outside the matrix" in md and cells[("none", A)]["n"] == "0"
    _, both = report(store, tmp_path / "both", "--matrix", str(matrix), "--paper-vs-tuned")
    assert {row for row, _ in both} == {"teacher", "none", "none+tuned", "kd", "kd+tuned"}
    assert both[("none", A)]["n"] == "3"
