"""Read FINISHED student runs from MLflow and turn them into one record per (row, pair, seed).

Rows are the teacher, the vanilla student (method `none`) and every distillation method. Accuracies
are in percent; the selection rule picks one metric and a run without it is left out, never replaced
by the other rule's number.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kdexp.config.matrix_keys import pair_name
from kdexp.report.compare import TUNED_SUFFIX, searched_keys

SELECT_METRICS = {
    "last": "student/test_top1",  # the last epoch's weights
    "best-val": "student/best_val/test_top1",  # the epoch of best validation accuracy (never chosen on test)
}
TEACHER, VANILLA = "teacher", "none"  # the two reference rows; VANILLA is the `none` method
STUDENT_FILTER = "tags.`kdexp.role` = 'student' AND attributes.status = 'FINISHED'"


@dataclass
class Record:
    row: str  # TEACHER, VANILLA or a method label
    pair: str  # "teacher->student"
    seed: str
    value: float  # top-1 test accuracy in %, under the selection rule
    params: float | None = None
    latency_ms: float | None = None  # CPU latency at batch 1
    settings: dict[str, str] | None = None  # the searched keys (conf/search/<method>.yaml) as run params
    repeat: str | None = None  # a tuned cell's study repeat (tag kdexp.tune_repeat)
    steps: float | None = None  # the student's optimizer steps (student/optimizer_steps)
    wall_s: float | None = None  # the student's training wall time (student/train_seconds)


@dataclass
class Notes:
    """What the collection left out or substituted, for the table's footnotes."""

    without_metric: int = 0  # student runs lacking the selected metric
    duplicates: int = 0  # older runs of the same (pair, method, seed)
    sweep_trials: int = 0  # trials of a sweep not taken: each cell takes its best by the objective(s)
    objectives: set[str] = field(default_factory=set)  # the sweeps' objectives, described
    outside_matrix: int = 0  # runs of pairs, methods or seeds the matrix does not declare
    vanilla_from_baseline: set[str] = field(default_factory=set)  # pairs whose vanilla row is the baseline role
    settings: set[str] = field(default_factory=set)  # distinct `kdexp.settings` of the runs in the table
    data: str | None = None


def search_runs(client, experiment_ids: list[str], extra_filter: str | None = None) -> list:
    """Every FINISHED student run of these experiments matching `extra_filter` (MLflow filter syntax)."""
    query = STUDENT_FILTER + (f" AND {extra_filter}" if extra_filter else "")
    runs, token = [], None
    while True:
        page = client.search_runs(experiment_ids, query, max_results=1000, page_token=token,
                                  order_by=["attributes.start_time ASC"])
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def run_pair(run) -> str:
    return pair_name(run.data.tags.get("teacher", "?"), run.data.tags.get("student", "?"))


def run_method(run) -> str:
    """The row label: the method, with TUNED_SUFFIX when its settings came from a tuning study."""
    method = run.data.tags.get("kdexp.method") or run.data.tags.get("distill", "?")
    return method + TUNED_SUFFIX if run.data.tags.get("kdexp.tuned") == "true" else method


def run_settings(run, row: str) -> dict[str, str]:
    return {k: run.data.params[k] for k in searched_keys(row) if k in run.data.params}


def latest_per_cell(runs: list, notes: Notes) -> list:
    """One run per (pair, method, seed, study repeat): the latest, older re-runs counted, not averaged in; for trials
    of a sweep, the best by the sweep's objective(s) (kdexp.report.sweeps), never merely the latest."""
    from kdexp.report import sweeps

    cells: dict[tuple, list] = {}
    for run in sorted(runs, key=lambda r: r.info.start_time or 0):
        key = (run_pair(run), run_method(run), run.data.tags.get("seed"), run.data.tags.get("kdexp.tune_repeat"))
        cells.setdefault(key, []).append(run)
    chosen = []
    for group in cells.values():
        trials = [r for r in group if sweeps.objectives(r)]
        if trials:
            study = trials[-1].data.tags.get(sweeps.STUDY_TAG)
            study_runs = [r for r in runs if r.data.tags.get(sweeps.STUDY_TAG) == study and sweeps.objectives(r)]
            chosen.append(sweeps.best_trial(trials, study_runs))
            notes.sweep_trials += len(trials) - 1
            notes.objectives.add(sweeps.describe(sweeps.objectives(trials[-1])))
            notes.duplicates += len(group) - len(trials)
        else:
            chosen.append(group[-1])
            notes.duplicates += len(group) - 1
    return chosen


def records_from_runs(runs: list, select: str, matrix=None) -> tuple[list[Record], Notes]:
    if select not in SELECT_METRICS:
        raise ValueError(f"select={select!r}: choose one of {', '.join(SELECT_METRICS)}")
    notes = Notes()
    if matrix is not None:
        kept = [r for r in runs if run_pair(r) in matrix.pairs and run_method(r) in matrix.methods
                and r.data.tags.get("seed") in {str(s) for s in matrix.seeds}]
        notes.outside_matrix, runs = len(runs) - len(kept), kept
    datasets = sorted({r.data.tags.get("data", "?") for r in runs})
    if len(datasets) > 1:
        raise ValueError(f"the runs span several data sets ({', '.join(datasets)}); one table is one data set: "
                         f"narrow them with --tag data={datasets[0]} or --experiment")
    notes.data = datasets[0] if datasets else None
    runs = latest_per_cell(runs, notes)
    notes.settings = {r.data.tags["kdexp.settings"] for r in runs if r.data.tags.get("kdexp.settings")}
    metric = SELECT_METRICS[select]
    records: list[Record] = []
    for run in runs:
        m, pair = run.data.metrics, run_pair(run)
        if metric not in m:
            notes.without_metric += 1
            continue
        row = run_method(run)
        records.append(Record(row, pair, run.data.tags.get("seed", "?"), 100 * m[metric],
                              m.get("student/params"), m.get("student/latency_b1_ms"), run_settings(run, row),
                              run.data.tags.get("kdexp.tune_repeat"), m.get("student/optimizer_steps"),
                              m.get("student/train_seconds")))
    records += teacher_records(runs)
    records += vanilla_from_baselines(runs, records, select, notes)
    return records, notes


def teacher_records(runs: list) -> list[Record]:
    """One record per distinct teacher of a pair (one in all when `teacher.seed` is pinned), always its
    final weights: teachers are trained alone, without a best-val checkpoint."""
    seen: dict[tuple, Record] = {}
    for run in runs:
        m, tags = run.data.metrics, run.data.tags
        if "teacher/test_top1" not in m:
            continue
        who = tags.get("kdexp.teacher_run_id") or tags.get("kdexp.teacher_fingerprint") or run.data.params.get(
            "teacher.ckpt") or run.info.run_id
        seen.setdefault((run_pair(run), who), Record(TEACHER, run_pair(run), who, 100 * m["teacher/test_top1"],
                                                     m.get("teacher/params"), m.get("teacher/latency_b1_ms")))
    return list(seen.values())


def vanilla_from_baselines(runs: list, records: list[Record], select: str, notes: Notes) -> list[Record]:
    """Pairs without `none` runs take their vanilla row from the baseline role (`baseline=true`), under
    `last` only: a baseline is trained alone and has no best-val test accuracy."""
    if select != "last":
        return []
    have = {r.pair for r in records if r.row == VANILLA}
    seen: dict[tuple, Record] = {}
    for run in runs:
        m, pair = run.data.metrics, run_pair(run)
        if pair in have or "baseline/test_top1" not in m:
            continue
        seed = run.data.tags.get("seed", "?")
        seen.setdefault((pair, seed), Record(VANILLA, pair, seed, 100 * m["baseline/test_top1"],
                                             m.get("baseline/params"), m.get("baseline/latency_b1_ms")))
        notes.vanilla_from_baseline.add(pair)
    return list(seen.values())
