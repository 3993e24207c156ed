"""kdexp.report.stats against scipy.stats and hand computation on hand-built numbers, and the statistics of
a real kdexp-report run: paired test, Holm per column, raw and adjusted p, 95 % CI of Δ, bad choices."""

from __future__ import annotations

import csv
import math
import time

import pytest
from scipy import stats as sp

from kdexp.config.errors import ConfigError
from kdexp.report import stats
from kdexp.report.cli import main

ROW = {"0": 75.0, "1": 79.0, "2": 77.0, "3": 80.5}
VANILLA = {"0": 70.0, "1": 72.0, "2": 74.0, "3": 73.0}


def test_paired_t_p_and_ci_match_scipy_and_the_hand_computation():
    got = stats.compare(ROW, VANILLA, stats.PAIRED_T)
    ref = sp.ttest_rel([ROW[s] for s in "0123"], [VANILLA[s] for s in "0123"])
    assert (got.test, got.n) == ("paired-t", 4)
    assert got.p == pytest.approx(ref.pvalue, rel=1e-12)
    low, high = ref.confidence_interval(0.95)
    assert got.ci == pytest.approx((low, high), rel=1e-12)
    diffs = [5.0, 7.0, 3.0, 7.5]  # by hand: mean 5.625, sd 2.056, t(0.975, 3) = 3.182446
    half = 3.182446305284263 * math.sqrt(sum((d - 5.625) ** 2 for d in diffs) / 3) / 2
    assert got.ci == pytest.approx((5.625 - half, 5.625 + half), rel=1e-9)


def test_welch_p_and_ci_match_scipy_and_seeds_that_do_not_pair_fall_back_to_welch():
    a, b = [73.0, 75.0], [70.0, 72.0, 74.0]
    got = stats.compare({"0": 73.0, "1": 75.0}, {"0": 70.0, "1": 72.0, "2": 74.0}, stats.PAIRED_T)
    ref = sp.ttest_ind(a, b, equal_var=False)
    assert got.test == "welch" and got.p == pytest.approx(ref.pvalue, rel=1e-12)
    assert got.ci == pytest.approx(tuple(ref.confidence_interval(0.95)), rel=1e-12)
    forced = stats.compare(ROW, VANILLA, stats.WELCH)
    assert forced.test == "welch"
    assert forced.p == pytest.approx(sp.ttest_ind(list(ROW.values()), list(VANILLA.values()),
                                                  equal_var=False).pvalue, rel=1e-12)


def test_wilcoxon_matches_scipy_and_undefined_cases_give_none():
    got = stats.compare(ROW, VANILLA, stats.WILCOXON)
    assert got.test == "wilcoxon" and got.p == pytest.approx(sp.wilcoxon([5.0, 7.0, 3.0, 7.5]).pvalue)
    assert got.p == pytest.approx(0.125)  # exact: 4 positive differences, 2 / 2**4
    constant = stats.compare({"0": 75.0, "1": 77.0}, {"0": 70.0, "1": 72.0})
    assert constant.p is None and constant.ci == (5.0, 5.0)  # no variance in the differences
    assert stats.compare({"0": 75.0}, {"0": 70.0}).p is None  # one seed


def test_holm_bonferroni_bh_on_known_vectors():
    p = [0.01, 0.04, 0.03, 0.005]
    # Holm by hand: sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 = 0.02, 0.03, 0.06, 0.04 -> running max
    assert stats.adjust(p, "holm") == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert stats.adjust(p, "bonferroni") == pytest.approx([0.04, 0.16, 0.12, 0.02])
    assert stats.adjust(p, "bh") == pytest.approx(list(sp.false_discovery_control(p, method="bh")))
    assert stats.adjust(p, "bh") == pytest.approx([0.02, 0.04, 0.04, 0.02])
    big = [0.2, 0.5, 0.9]
    assert stats.adjust(big, "holm") == pytest.approx([0.6, 1.0, 1.0])  # capped at 1
    assert stats.adjust(big, "bh") == pytest.approx(list(sp.false_discovery_control(big)))
    assert stats.adjust(p, "none") == p and stats.adjust([], "holm") == []


def test_an_unknown_test_or_correction_is_one_clear_line():
    with pytest.raises(ConfigError, match=r"--correction 'sidak' is invalid: choose one of holm, bonferroni, bh, none"):
        stats.adjust([0.1], "sidak")
    with pytest.raises(ConfigError, match=r"--test 't' is invalid: choose one of paired-t, wilcoxon, welch"):
        stats.compare(ROW, VANILLA, "t")


# A column of three methods against the vanilla student, paired by seed (values in %): raw paired p of
# KD 0.0012, AT 0.036, DKD 0.39 -> Holm: KD 0.0035 (marked), AT 0.072 (not), DKD 0.39.
PAIR = "t->s"
RUNS = {"none": [70.0, 72.0, 74.0, 71.0], "kd": [74.0, 76.5, 77.0, 75.0], "at": [72.0, 72.5, 76.0, 74.0],
        "dkd": [71.0, 71.5, 75.0, 71.0]}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    root = tmp_path_factory.mktemp("stats")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("bench", artifact_location=(root / "artifacts").as_uri())
    for method, values in RUNS.items():
        for seed, value in enumerate(values):
            tags = {"kdexp.role": "student", "data": "synthetic", "teacher": "t", "student": "s", "distill": method,
                    "kdexp.method": method, "seed": str(seed), "kdexp.teacher_run_id": "t0"}
            run = client.create_run(exp, tags=tags, start_time=int(time.time() * 1000))
            now = int(time.time() * 1000)
            client.log_batch(run.info.run_id, metrics=[Metric("student/test_top1", value / 100, now, 0),
                                                       Metric("teacher/test_top1", 0.9, now, 0)])
            client.set_terminated(run.info.run_id, "FINISHED")
    return uri


def report(uri, out, *args):
    assert main(["--uri", uri, "--experiment", "bench", "--out", str(out), "--name", "r", "--no-plots",
                 "--no-mlflow", *args]) == 0
    with open(out / "r" / "results.csv", newline="") as handle:
        return (out / "r" / "table.md").read_text(), {r["row"]: r for r in csv.DictReader(handle)}


@pytest.mark.slow  # a new MLflow store: its migrations take seconds
def test_report_marks_after_holm_over_the_column_with_raw_and_adjusted_p(store, tmp_path):
    md, rows = report(store, tmp_path)
    raw = {m: sp.ttest_rel(RUNS[m], RUNS["none"]).pvalue for m in ("kd", "at", "dkd")}
    holm = dict(zip(raw, stats.adjust(list(raw.values()), "holm")))
    for method in raw:
        assert float(rows[method]["p_vs_vanilla"]) == pytest.approx(raw[method], rel=1e-3)
        assert float(rows[method]["p_adjusted"]) == pytest.approx(holm[method], rel=1e-3)
        assert (rows[method]["test"], rows[method]["correction"], rows[method]["n_compared"]) == ("paired-t", "holm",
                                                                                                "4")
    assert raw["at"] < 0.05 < holm["at"] and holm["kd"] < 0.05  # the correction takes AT's mark away
    assert (rows["kd"]["significant"], rows["at"]["significant"], rows["dkd"]["significant"]) == ("1", "0", "0")
    ci = sp.ttest_rel(RUNS["kd"], RUNS["none"]).confidence_interval(0.95)
    assert (float(rows["kd"]["ci95_low"]), float(rows["kd"]["ci95_high"])) == pytest.approx((ci.low, ci.high),
                                                                                           abs=0.006)
    assert "paired t-test on per-seed differences" in md and "Holm's step-down correction" in md
    assert "[" not in md.split("| KD |")[1].split("\n")[0]  # no CI in the table without --ci

    md_none, rows_none = report(store, tmp_path / "none", "--correction", "none")
    assert rows_none["at"]["significant"] == "1" and rows_none["at"]["p_adjusted"] == rows_none["at"]["p_vs_vanilla"]
    assert "no multiple-comparison correction, p < 0.05" in md_none and "adjusted p" not in md_none


@pytest.mark.slow  # a new MLflow store: its migrations take seconds
def test_ci_in_the_table_on_request_and_wilcoxon_named_in_the_caption(store, tmp_path):
    md, rows = report(store, tmp_path, "--ci", "--test", "wilcoxon")
    line = next(x for x in md.splitlines() if x.startswith("| KD |"))
    assert f"(+3.88 [{rows['kd']['ci95_low']}, {rows['kd']['ci95_high']}])" in line
    assert "Wilcoxon signed-rank test on per-seed differences" in md and "95 % confidence interval of Δ" in md
    assert float(rows["kd"]["p_vs_vanilla"]) == pytest.approx(sp.wilcoxon(
        [a - b for a, b in zip(RUNS["kd"], RUNS["none"])]).pvalue)


@pytest.mark.slow  # a new MLflow store: its migrations take seconds
@pytest.mark.parametrize("flag, value, choices", [("--correction", "fdr", "holm, bonferroni, bh, none"),
                                                  ("--test", "ttest", "paired-t, wilcoxon, welch")])
def test_report_rejects_an_unknown_test_or_correction_with_exit_2(store, tmp_path, capsys, flag, value, choices):
    args = ["--uri", store, "--experiment", "bench", "--out", str(tmp_path), "--no-mlflow", flag, value]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"kdexp-report: error: {flag} {value!r} is invalid: choose one of {choices}"]
    assert not (tmp_path / "bench").exists()  # nothing written


def test_recount_marks_recomputes_welch_from_printed_numbers_and_applies_holm():
    from benchmarks.recount_marks import recount, tables

    text = ("| Teacher → Student | t->s |\n|---|---|\n| Teacher | 90.00 |\n| Student (vanilla) | 80.00 ± 1.00 |\n"
            "| KD | 83.00 ± 1.00 (+3.00)* |\n| AT | 81.30 ± 0.50 (+1.30)* |\n| DKD | 80.50 ± 1.00 (+0.50) |\n")
    (column,) = recount(tables(text)[0], 5, None, "holm")
    raw = {m: sp.ttest_ind_from_stats(mean, sd, 5, 80.0, 1.0, 5, equal_var=False).pvalue
           for m, mean, sd in (("KD", 83.0, 1.0), ("AT", 81.3, 0.5), ("DKD", 80.5, 1.0))}
    assert raw["KD"] < 0.05 / 3 and 0.05 / 2 < raw["AT"] < 0.05  # Holm keeps KD, drops AT
    assert column == {"pair": "t->s", "family": 3, "printed": ["KD", "AT"], "raw": ["KD", "AT"], "kept": ["KD"]}
