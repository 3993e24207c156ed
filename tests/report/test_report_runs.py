"""runs.csv: kdexp-report writes one line per student run and regenerates its table from that file alone,
byte for byte; every committed docs/results/<matrix>/ table is checked against its committed runs.csv."""

from __future__ import annotations

import csv
import re
import shlex
from pathlib import Path

import pytest

from kdexp.report.cli import main
from tests.report.test_report import LAST, add_run, student_metrics

RESULTS = Path(__file__).resolve().parents[2] / "docs" / "results"
COMMITTED = sorted(p.parent for p in RESULTS.glob("*/runs.csv"))
REGENERATE = re.compile(r"^Regenerate from the per-run file: `kdexp-report --runs runs\.csv ?(.*)`$", re.M)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    from mlflow.tracking import MlflowClient

    root = tmp_path_factory.mktemp("runs")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("bench", artifact_location=(root / "artifacts").as_uri())
    ids = []
    for (pair, method), (lasts, bests) in LAST.items():
        for seed, (last, best) in enumerate(zip(lasts, bests)):
            ids.append(add_run(client, exp, pair, method, seed, student_metrics(pair, last, best)))
    client.set_tag(ids[0], "mlflow.source.git.commit", "abc123")
    client.set_tag(ids[0], "kdexp.lib.torch", "2.13.0")
    client.log_param(ids[-1], "distill.beta", "8.0")  # not searched by AT: not a setting
    return uri, ids


@pytest.mark.slow  # a new MLflow store: its migrations take seconds
def test_the_table_regenerates_from_runs_csv_byte_for_byte(store, tmp_path):
    uri, ids = store
    options = ["--select", "best-val", "--ci", "--no-plots"]
    assert main(["--uri", uri, "--experiment", "bench", "--out", str(tmp_path / "a"), "--name", "r",
                 "--no-mlflow", *options]) == 0
    first = tmp_path / "a" / "r"
    with open(first / "runs.csv", newline="") as handle:
        lines = list(csv.DictReader(handle))
    assert [line["run_id"] for line in lines] == ids  # one line per student run, oldest first
    line = lines[0]
    assert (line["pair"], line["method"], line["seed"], line["data"]) == ("t_a->s_a", "none", "0", "synthetic")
    assert (line["student/test_top1"], line["student/best_val/test_top1"]) == ("0.7", "0.6")  # as logged
    assert (line["commit"], line["torch"]) == ("abc123", "2.13.0")
    assert float(line["wall_s"]) >= 0 and line["experiment"] == "bench"
    assert lines[-1]["settings"] == ""  # AT searches no distill.beta

    assert main(["--runs", str(first / "runs.csv"), "--out", str(tmp_path / "b"), "--name", "r", *options]) == 0
    second = tmp_path / "b" / "r"
    for name in ("runs.csv", "table.md", "table.tex", "results.csv"):
        assert (second / name).read_bytes() == (first / name).read_bytes(), name
    assert "--select best-val --test paired-t --correction holm --ci`" in (first / "table.md").read_text()


def test_a_runs_file_without_the_needed_columns_is_one_line_and_exit_2(tmp_path, capsys):
    bad = tmp_path / "runs.csv"
    bad.write_text("run_id,start_time,teacher,student,method,data\nx,1,t,s,kd,synthetic\n")
    assert main(["--runs", str(bad), "--out", str(tmp_path), "--no-plots"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "missing column(s) seed, student/test_top1" in err[0]
    assert main(["--runs", str(bad), "--filter", "tags.x = 'y'", "--out", str(tmp_path)]) == 2
    assert "--filter select runs in a store" in capsys.readouterr().err
    assert main(["--runs", str(tmp_path / "nope.csv"), "--out", str(tmp_path)]) == 2
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("folder", COMMITTED, ids=[p.name for p in COMMITTED])
def test_every_committed_table_regenerates_from_its_committed_runs(folder, tmp_path):
    """An edit by hand to a committed table, or a report change that alters it, fails here: re-run the
    command of docs/results/README.md and commit what it writes."""
    table = (folder / "table.md").read_text(encoding="utf-8")
    found = REGENERATE.search(table)
    assert found, f"{folder / 'table.md'} does not say how it was made"
    args = ["--runs", str(folder / "runs.csv"), *shlex.split(found.group(1)), "--out", str(tmp_path),
            "--name", folder.name, "--no-plots"]
    assert main(args) == 0
    for name in ("table.md", "table.tex", "results.csv"):
        if (folder / name).is_file():
            assert (tmp_path / folder.name / name).read_bytes() == (folder / name).read_bytes(), folder / name


def test_there_is_a_committed_example():
    assert [p.name for p in COMMITTED if p.name == "smoke"] == ["smoke"]
