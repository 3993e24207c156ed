"""The per-run results file (runs.csv): one line per student run, everything a report reads from it.

`kdexp-report` writes it beside results.csv and always builds its table from what it wrote, so
`kdexp-report --runs runs.csv` (no MLflow store) regenerates the same table byte for byte. Metrics are the
values as logged (fractions; `repr`, so they read back exactly); an empty field is an absent tag or metric.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

from kdexp.config.errors import ConfigError
from kdexp.config.matrix_keys import pair_name
from kdexp.report.compare import searched_keys

# column -> the run tag it holds
TAG_COLUMNS = {
    "teacher": "teacher", "student": "student", "method": "kdexp.method", "distill": "distill",
    "tuned": "kdexp.tuned", "seed": "seed", "study_repeat": "kdexp.tune_repeat", "data": "data",
    "settings_id": "kdexp.settings", "teacher_run_id": "kdexp.teacher_run_id",
    "teacher_fingerprint": "kdexp.teacher_fingerprint", "study": "optuna.study_name",
    "trial": "optuna.trial_number", "objectives": "kdexp.objectives",
    "commit": "mlflow.source.git.commit", "dirty": "kdexp.source.dirty", "kdexp_version": "kdexp.version",
    "torch": "kdexp.lib.torch", "lightning": "kdexp.lib.lightning", "optuna": "kdexp.lib.optuna",
    "mlflow": "kdexp.lib.mlflow", "hydra_core": "kdexp.lib.hydra-core", "python": "kdexp.lib.python",
}
METRICS = (  # validation first: what tuning and best-val select on; then test; then cost
    "student/val_acc", "student/best_val_acc", "student/test_top1", "student/best_val/test_top1",
    "teacher/test_top1", "baseline/test_top1", "student/params", "student/latency_b1_ms", "teacher/params",
    "teacher/latency_b1_ms", "baseline/params", "baseline/latency_b1_ms", "student/optimizer_steps",
    "student/train_seconds",
)
PARAM_COLUMNS = {"teacher_ckpt": "teacher.ckpt"}
LEAD = ["run_id", "experiment", "matrix", "pair", "start_time", "end_time", "wall_s"]
NEEDED = ["run_id", "start_time", "teacher", "student", "method", "seed", "data"]


@dataclass
class Info:
    run_id: str
    start_time: int | None
    end_time: int | None = None


@dataclass
class Data:
    tags: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)


@dataclass
class FileRun:
    """A student run as the report reads it (`.info`, `.data` as an MLflow Run), from a line of runs.csv."""

    info: Info
    data: Data
    experiment: str = ""
    matrix: str = ""


def from_mlflow(run, experiment: str, matrix: str, objectives: str | None = None) -> FileRun:
    """The columns of runs.csv from an MLflow run; `objectives`: its sweep's, from the parent run."""
    tags = {tag: run.data.tags[tag] for tag in TAG_COLUMNS.values() if tag in run.data.tags}
    tags.update({k: v for k, v in run.data.tags.items() if k.startswith("kdexp.") and k not in _SKIPPED_TAGS})
    if objectives:
        tags["kdexp.objectives"] = objectives
    method = tags.get("kdexp.method") or tags.get("distill", "?")
    keys = [*searched_keys(method), *PARAM_COLUMNS.values()]
    params = {k: run.data.params[k] for k in keys if k in run.data.params}
    wanted = set(METRICS) | set(objective_metrics(objectives))
    metrics = {k: v for k, v in run.data.metrics.items() if k in wanted}
    info = Info(run.info.run_id, run.info.start_time, run.info.end_time)
    return FileRun(info, Data(tags, metrics, params), experiment, matrix)


# tags that vary between runs of one cell without meaning (resume bookkeeping) or are long ids
_SKIPPED_TAGS = {"kdexp.cell", "kdexp.resume_key", "kdexp.resumed", "kdexp.data.train_rows",
                 "kdexp.data.val_rows", "kdexp.data.test_rows", "kdexp.baseline_run_id"}


def objective_metrics(objectives: str | None) -> list[str]:
    """"student/val_acc:maximize, student/latency_b1_ms:minimize" -> the metric names."""
    return [item.rsplit(":", 1)[0].strip() for item in (objectives or "").split(",") if item.strip()]


def to_csv(runs: list[FileRun]) -> str:
    """runs.csv: the lead columns, the tags, metrics present in any run, settings and other kdexp tags."""
    metrics = [m for m in METRICS if any(m in r.data.metrics for r in runs)]
    metrics += sorted({m for r in runs for m in r.data.metrics} - set(metrics))
    columns = [*LEAD, *TAG_COLUMNS, *metrics, "settings", *PARAM_COLUMNS, "other_tags"]
    known = set(TAG_COLUMNS.values())
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for run in runs:
        tags, info = run.data.tags, run.info
        timed = info.start_time is not None and info.end_time is not None
        wall = f"{(info.end_time - info.start_time) / 1000:.1f}" if timed else ""
        line = {"run_id": info.run_id, "experiment": run.experiment, "matrix": run.matrix,
                "pair": pair_name(tags.get("teacher", "?"), tags.get("student", "?")),
                "start_time": info.start_time if info.start_time is not None else "",
                "end_time": info.end_time if info.end_time is not None else "", "wall_s": wall}
        line.update({column: tags.get(tag, "") for column, tag in TAG_COLUMNS.items()})
        line.update({m: repr(run.data.metrics[m]) if m in run.data.metrics else "" for m in metrics})
        searched = {k: v for k, v in run.data.params.items() if k not in PARAM_COLUMNS.values()}
        line["settings"] = json.dumps(searched, sort_keys=True) if searched else ""
        line.update({column: run.data.params.get(param, "") for column, param in PARAM_COLUMNS.items()})
        other = {k: v for k, v in tags.items() if k not in known}
        line["other_tags"] = json.dumps(other, sort_keys=True) if other else ""
        writer.writerow(line)
    return buffer.getvalue()


def read_runs(path: str | Path, metric: str) -> list[FileRun]:
    """The runs of a runs.csv, as the report reads them.

    Args:
        path: a runs.csv written by kdexp-report.
        metric: the metric the table's selection rule reads (a needed column).
    Returns:
        One FileRun per line, in the file's order.
    Raises:
        FileNotFoundError: no such file. ConfigError: a needed column is missing (named).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--runs {str(path)!r}: no such file")
    rows = csv.DictReader(io.StringIO(path.read_text(encoding="utf-8")))
    missing = [c for c in [*NEEDED, metric] if c not in (rows.fieldnames or [])]
    if missing:
        raise ConfigError(f"--runs {path}: missing column(s) {', '.join(missing)} (a runs.csv written by "
                          f"kdexp-report has them; needed: {', '.join([*NEEDED, metric])})")
    runs = []
    for row in rows:
        tags = {tag: row[column] for column, tag in TAG_COLUMNS.items() if row.get(column)}
        tags.update(json.loads(row["other_tags"]) if row.get("other_tags") else {})
        metrics = {k: float(v) for k, v in row.items() if k and "/" in k and v}
        params = json.loads(row["settings"]) if row.get("settings") else {}
        params.update({param: row[column] for column, param in PARAM_COLUMNS.items() if row.get(column)})
        start, end = row.get("start_time"), row.get("end_time")
        info = Info(row["run_id"], int(start) if start else None, int(end) if end else None)
        runs.append(FileRun(info, Data(tags, metrics, params), row.get("experiment", ""), row.get("matrix", "")))
    return runs
