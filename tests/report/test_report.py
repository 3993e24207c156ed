"""kdexp-report maths and outputs on a hand-built MLflow store with known metric values.

Pair A (t_a->s_a): vanilla 70/72/74, KD 75/79/77 (best; paired p = 0.049, 0.099 after Holm with AT's),
AT 73/75 (two seeds only: Welch's test); teacher 80.
Pair B (t_b->s_b): vanilla 50/50/50, AT 60/62/64 (best), KD only FAILED (so missing); teacher 90.
best-val metrics differ on purpose, so the selection rule is visible in every number.
"""

from __future__ import annotations

import csv
import re
import time

import pytest

from kdexp.report.cli import main

A, B = "t_a->s_a", "t_b->s_b"
LAST = {  # (pair, method) -> per-seed last-epoch / best-val test top-1 (fractions, as kdexp logs them)
    (A, "none"): ([0.70, 0.72, 0.74], [0.60, 0.62, 0.64]),
    (A, "kd"): ([0.75, 0.79, 0.77], [0.80, 0.81, 0.82]),
    (A, "at"): ([0.73, 0.75], [0.70, 0.70]),
    (B, "none"): ([0.50, 0.50, 0.50], [0.55, 0.56, 0.57]),
    (B, "at"): ([0.60, 0.62, 0.64], [0.50, 0.50, 0.50]),
}
TEACHER = {A: 0.80, B: 0.90}


def add_run(client, exp_id, pair, method, seed, metrics, status="FINISHED", role="student", data="synthetic"):
    from mlflow.entities import Metric

    teacher, student = pair.split("->")
    tags = {"kdexp.role": role, "data": data, "teacher": teacher, "student": student, "distill": method,
            "kdexp.method": method, "seed": str(seed), "kdexp.teacher_run_id": f"teacher-run-{teacher}"}
    run = client.create_run(exp_id, tags=tags, start_time=int(time.time() * 1000))
    now = int(time.time() * 1000)
    client.log_batch(run.info.run_id, metrics=[Metric(k, v, now, 0) for k, v in metrics.items()])
    client.set_terminated(run.info.run_id, status)
    return run.info.run_id


def student_metrics(pair, last, best):
    big = pair == A
    return {"student/test_top1": last, "student/best_val/test_top1": best, "teacher/test_top1": TEACHER[pair],
            "student/params": 1000.0 if big else 2000.0, "student/latency_b1_ms": 0.5,
            "teacher/params": 50000.0, "teacher/latency_b1_ms": 2.0}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    from mlflow.tracking import MlflowClient

    root = tmp_path_factory.mktemp("report")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("bench", artifact_location=(root / "artifacts").as_uri())
    for (pair, method), (lasts, bests) in LAST.items():
        for seed, (last, best) in enumerate(zip(lasts, bests)):
            add_run(client, exp, pair, method, seed, student_metrics(pair, last, best))
    add_run(client, exp, B, "kd", 0, student_metrics(B, 0.99, 0.99), status="FAILED")  # never counted
    add_run(client, exp, A, "teacher", 0, {"test_top1": 0.99}, role="teacher")  # not a student run
    other = client.create_experiment("other", artifact_location=(root / "artifacts2").as_uri())
    add_run(client, other, A, "kd", 0, student_metrics(A, 0.10, 0.10))  # another experiment: not read
    return root, uri


def report(store, tmp_path, *args):
    root, uri = store
    rc = main(["--uri", uri, "--experiment", "bench", "--out", str(tmp_path), "--name", "r", "--no-plots",
               "--no-mlflow", *args])
    assert rc == 0
    return tmp_path / "r"


def csv_cells(out) -> dict:
    with open(out / "results.csv", newline="") as handle:
        return {(r["row"], r["pair"]): r for r in csv.DictReader(handle)}


def md_rows(out) -> dict:
    """{row label: [cell text per pair]} from the Markdown table."""
    rows = {}
    for line in (out / "table.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| ") and not line.startswith("| Teacher → Student"):
            rows[cells[0]] = cells[1:]
    return rows


def test_mean_std_n_delta_and_best_last_epoch(store, tmp_path):
    cells = csv_cells(report(store, tmp_path))
    kd = cells[("kd", A)]
    assert (kd["mean"], kd["std"], kd["n"], kd["delta_vs_vanilla"]) == ("77.00", "2.00", "3", "+5.00")
    assert kd["best"] == "1"
    assert kd["values"] == "75.0000;79.0000;77.0000" and kd["metric"] == "student/test_top1"
    vanilla = cells[("none", A)]
    assert (vanilla["mean"], vanilla["std"], vanilla["delta_vs_vanilla"]) == ("72.00", "2.00", "")
    assert vanilla["best"] == "0"
    at_b = cells[("at", B)]
    assert (at_b["mean"], at_b["delta_vs_vanilla"], at_b["best"]) == ("62.00", "+12.00", "1")
    assert cells[("none", B)]["std"] == "0.00"
    assert cells[("teacher", A)]["mean"] == "80.00" and cells[("teacher", B)]["mean"] == "90.00"
    assert cells[("teacher", A)]["n"] == "1" and cells[("teacher", A)]["best"] == "0"  # teacher never "best"


def test_missing_cell_is_a_dash_with_footnote_never_zero(store, tmp_path):
    out = report(store, tmp_path)
    cells = csv_cells(out)
    assert cells[("kd", B)]["n"] == "0" and cells[("kd", B)]["mean"] == ""  # only a FAILED run there
    rows = md_rows(out)
    assert rows["KD"] == ["**77.00** ± 2.00 (+5.00)", "–"]  # paired p = 0.049, Holm-adjusted 0.099
    assert "– no finished run for this cell" in (out / "table.md").read_text()
    assert "0.00 (" not in rows["KD"][1]


def test_fewer_seeds_are_marked_and_n_is_given(store, tmp_path):
    out = report(store, tmp_path)
    assert md_rows(out)["AT"][0] == "74.00 ± 1.41 (+2.00) †(n=2)"
    assert csv_cells(out)[("at", A)]["fewer_seeds"] == "1"
    assert "† fewer than 3 seeds" in (out / "table.md").read_text()
    more = csv_cells(report(store, tmp_path, "--seeds", "4"))
    assert more[("kd", A)]["fewer_seeds"] == "1" and more[("teacher", A)]["fewer_seeds"] == "0"


def test_layout_teacher_and_vanilla_on_top_methods_as_rows_pairs_as_columns(store, tmp_path):
    text = (report(store, tmp_path) / "table.md").read_text()
    header = next(line for line in text.splitlines() if line.startswith("| Teacher → Student"))
    assert header == f"| Teacher → Student | {A} | {B} |"
    assert list(md_rows(tmp_path / "r")) == ["Teacher", "Student (vanilla)", "KD", "AT"]


def test_best_val_rule_changes_every_student_number_and_the_caption_says_so(store, tmp_path):
    out = report(store, tmp_path, "--select", "best-val")
    cells = csv_cells(out)
    assert cells[("kd", A)]["mean"] == "81.00" and cells[("kd", A)]["delta_vs_vanilla"] == "+19.00"
    assert cells[("at", B)]["mean"] == "50.00" and cells[("none", B)]["best"] == "1"
    assert {r["metric"] for k, r in cells.items() if k[0] != "teacher"} == {"student/best_val/test_top1"}
    caption = (out / "table.md").read_text()
    assert "Selection rule `best-val`" in caption and "never on test" in caption
    last = (report(store, tmp_path) / "table.md").read_text()
    assert "Selection rule `last`" in last and "last epoch" in last


def test_latex_is_booktabs_and_parses_back(store, tmp_path):
    tex = (report(store, tmp_path) / "table.tex").read_text()
    for command in (r"\toprule", r"\midrule", r"\bottomrule", r"\caption{", r"\begin{tabular}{lcc}"):
        assert command in tex
    rows = {line.split(" & ")[0]: line.split(" & ")[1:] for line in tex.splitlines() if line.endswith(r"\\")}
    assert rows["KD"] == [r"\textbf{77.00} $\pm$ 2.00 (+5.00)", r"-- \\"]
    assert rows["AT"][0] == r"74.00 $\pm$ 1.41 (+2.00) $^\dagger$(n=2)"
    numbers = [float(x) for x in re.findall(r"\d+\.\d+", rows["Student (vanilla)"][1])]
    assert numbers == [50.0, 0.0]
    assert r"t\_a$\rightarrow$s\_a" in tex  # escaped for LaTeX


def test_matrix_fixes_order_expected_cells_and_seed_count(store, tmp_path):
    matrix = tmp_path / "m.yaml"
    matrix.write_text(
        "# @package _global_\ntracking: {experiment: bench}\nhydra:\n  sweeper:\n    params:\n"
        f"      pair: \"'{B}','{A}'\"\n      distill: none,at,dkd\n      seed: 0,1,2,3\n"
    )
    root, uri = store
    assert main(["--uri", uri, "--matrix", str(matrix), "--out", str(tmp_path), "--no-plots"]) == 0
    out = tmp_path / "m"
    assert list(md_rows(out)) == ["Teacher", "Student (vanilla)", "AT", "DKD"]
    assert md_rows(out)["DKD"] == ["–", "–"]  # declared, never run
    assert "† fewer than 4 seeds" in (out / "table.md").read_text()
    assert "run(s) outside the matrix" in (out / "table.md").read_text()  # the KD runs


def test_vanilla_row_from_baseline_runs_under_last_only(tmp_path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'b.db'}"
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("b", artifact_location=(tmp_path / "art").as_uri())
    for seed, (s, b) in enumerate([(0.8, 0.6), (0.9, 0.7)]):
        add_run(client, exp, A, "kd", seed, {**student_metrics(A, s, s), "baseline/test_top1": b})
    base = ["--uri", uri, "--experiment", "b", "--out", str(tmp_path), "--no-plots", "--no-mlflow"]
    assert main([*base, "--name", "last"]) == 0
    assert md_rows(tmp_path / "last")["Student (vanilla)"] == ["65.00 ± 7.07"]
    assert "baseline runs" in (tmp_path / "last" / "table.md").read_text()
    assert main([*base, "--name", "bv", "--select", "best-val"]) == 0
    assert md_rows(tmp_path / "bv")["Student (vanilla)"] == ["–"]  # baselines have no best-val number


def test_latest_run_of_a_repeated_cell_counts_and_mixed_data_is_an_error(tmp_path, capsys):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'd.db'}"
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("d", artifact_location=(tmp_path / "art").as_uri())
    add_run(client, exp, A, "kd", 0, student_metrics(A, 0.1, 0.1))
    time.sleep(0.01)
    add_run(client, exp, A, "kd", 0, student_metrics(A, 0.5, 0.5))
    base = ["--uri", uri, "--experiment", "d", "--out", str(tmp_path), "--no-plots", "--no-mlflow"]
    assert main([*base, "--name", "dup"]) == 0
    assert csv_cells(tmp_path / "dup")[("kd", A)]["mean"] == "50.00"
    assert "1 older run(s)" in (tmp_path / "dup" / "table.md").read_text()
    add_run(client, exp, B, "kd", 0, student_metrics(B, 0.5, 0.5), data="cifar100")
    assert main([*base, "--name", "mixed"]) == 2
    assert "several data sets (cifar100, synthetic)" in capsys.readouterr().err
    assert main([*base, "--name", "one", "--tag", "data=cifar100"]) == 0
    assert list(csv_cells(tmp_path / "one")) == [("teacher", B), ("none", B), ("kd", B)]


def test_clear_errors_for_missing_store_and_experiment(store, tmp_path, capsys):
    assert main(["--uri", f"sqlite:///{tmp_path / 'none.db'}", "--out", str(tmp_path)]) == 2
    assert "no tracking store" in capsys.readouterr().err
    assert not (tmp_path / "none.db").exists()
    assert main(["--uri", store[1], "--experiment", "nope", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "no experiment 'nope'" in err and "bench" in err  # lists the experiments there are
    with pytest.raises(SystemExit):
        main(["--select", "best"])  # argparse: one of last, best-val


def test_report_is_logged_as_an_mlflow_run_with_its_files(store, tmp_path):
    from mlflow.tracking import MlflowClient

    root, uri = store
    assert main(["--uri", uri, "--experiment", "bench", "--out", str(tmp_path), "--name", "logged"]) == 0
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("bench")
    query = "tags.`kdexp.role` = 'report' AND tags.`kdexp.report` = 'logged'"
    runs = client.search_runs([exp.experiment_id], query)
    assert len(runs) == 1 and runs[0].data.tags["kdexp.select"] == "last"
    logged = {a.path for a in client.list_artifacts(runs[0].info.run_id, "report")}
    assert {"report/table.md", "report/table.tex", "report/results.csv"} <= logged
    pytest.importorskip("matplotlib")
    figures = {"report/accuracy_vs_params.png", "report/accuracy_vs_latency.png", "report/method_ranking.png"}
    assert figures <= logged


def test_without_matplotlib_figures_are_skipped_with_a_message(store, tmp_path, monkeypatch, capsys):
    import kdexp.report.plots as plots

    monkeypatch.setattr(plots, "pyplot", lambda: None)
    root, uri = store
    assert main(["--uri", uri, "--experiment", "bench", "--out", str(tmp_path), "--no-mlflow"]) == 0
    assert "matplotlib is not installed: figures skipped" in capsys.readouterr().err
    assert (tmp_path / "bench" / "table.md").is_file() and not list((tmp_path / "bench").glob("*.png"))


def test_reference_numbers_from_markdown_and_csv(store, tmp_path):
    md = tmp_path / "ref.md"
    md.write_text("| T→S | T-A→S-A | t_b→s_b |\n|---|---|---|\n| Teacher | 81.00 | 90.00 |\n"
                  "| Student (vanilla) | 71.00 | N/A |\n| KD (paper) | 76.50 | 60.00 |\n")
    cells = csv_cells(report(store, tmp_path, "--reference", str(md)))
    assert cells[("kd", A)]["reference"] == "76.50" and cells[("kd", A)]["diff_vs_reference"] == "+0.50"
    assert cells[("none", B)]["reference"] == "" and cells[("kd", B)]["diff_vs_reference"] == ""
    assert "## Versus the reference" in (tmp_path / "r" / "table.md").read_text()
    ref_csv = tmp_path / "ref.csv"
    ref_csv.write_text(f"pair,method,top1\n{A},at,73.0\n")
    cells = csv_cells(report(store, tmp_path, "--reference", str(ref_csv)))
    assert cells[("at", A)]["diff_vs_reference"] == "+1.00"


def test_a_table_mixing_settings_says_so(tmp_path):
    """Runs of one table trained with other data/recipe settings (tag kdexp.settings) get a warning footnote."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 's.db'}"
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("s", artifact_location=(tmp_path / "art").as_uri())
    ids = [add_run(client, exp, A, m, 0, student_metrics(A, 0.5, 0.5)) for m in ("none", "kd")]
    for run_id in ids:
        client.set_tag(run_id, "kdexp.settings", "recipe-1")
    base = ["--uri", uri, "--experiment", "s", "--out", str(tmp_path), "--no-plots", "--no-mlflow"]
    assert main([*base, "--name", "same"]) == 0
    assert "different settings" not in (tmp_path / "same" / "table.md").read_text()
    client.set_tag(ids[1], "kdexp.settings", "recipe-2")  # kd re-run after the recipe changed
    assert main([*base, "--name", "mixed"]) == 0
    assert "⚠ These runs were trained with 2 different settings" in (tmp_path / "mixed" / "table.md").read_text()
