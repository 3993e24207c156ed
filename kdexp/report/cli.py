"""`kdexp-report`: the benchmark table of a matrix (or of any student runs) from MLflow.

    kdexp-report --matrix fashion_cpu                       # the experiment, pairs, methods, seeds of the file
    kdexp-report --experiment kdexp --select best-val --filter "tags.data = 'digits'"
    kdexp-report --runs docs/results/smoke/runs.csv --matrix smoke   # the same table, without the store

Writes runs.csv (one line per student run), table.md, table.tex, results.csv and figures to
outputs/reports/<name>/, and logs them as the artifacts of a run tagged kdexp.role=report in the same MLflow
experiment. The table is always built from runs.csv, so `--runs` regenerates it byte for byte.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from kdexp.config.errors import ConfigError
from kdexp.report import stats
from kdexp.report.collect import SELECT_METRICS, records_from_runs, search_runs
from kdexp.report.table import Table, build_table
from kdexp.tracking.locate import add_store_arguments, hydra_style, parsed_uri

DEFAULT_EXPERIMENT = "kdexp"  # tracking.experiment of conf/train.yaml


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="kdexp-report", description=__doc__.split("\n\n")[0])
    add_store_arguments(p)
    p.add_argument("--matrix", help="a matrix name (sweeps/matrix/<name>.yaml) or file: its experiment, and its "
                                    "pairs, methods and seeds as the expected cells, in the file's order")
    p.add_argument("--experiment", action="append",
                   help=f"MLflow experiment name (repeatable; default: the matrix's, else {DEFAULT_EXPERIMENT!r})")
    p.add_argument("--filter", help="an extra MLflow filter on student runs, e.g. \"params.`recipe.lr` = '0.05'\"")
    p.add_argument("--tag", action="append", default=[], metavar="KEY=VALUE",
                   help="only student runs with this tag, e.g. --tag data=cifar100 (repeatable)")
    p.add_argument("--select", choices=list(SELECT_METRICS), default="last",
                   help="which test accuracy: last epoch (default) or the epoch of best validation accuracy")
    p.add_argument("--seeds", type=int, help="seeds expected per cell; fewer are marked (default: the matrix's "
                                             "seed count, else the largest n found)")
    p.add_argument("--paper-vs-tuned", action="store_true",
                   help="rows of paper settings and of tuned settings (tag kdexp.tuned) side by side, with Δ and "
                        "Welch's p between them; with --matrix, both kinds of runs of its methods")
    p.add_argument("--test", default=stats.PAIRED_T, metavar="|".join(stats.TESTS),
                   help="test against the vanilla student: paired by seed (default %(default)s; Welch where a "
                        "cell's seeds do not all pair), wilcoxon (signed-rank, paired), or welch everywhere")
    p.add_argument("--correction", default="holm", metavar="|".join(stats.CORRECTIONS),
                   help="multiple-comparison control over the methods of each column (default %(default)s)")
    p.add_argument("--ci", action="store_true", help="show the 95%% CI of Δ in the table (results.csv always has it)")
    p.add_argument("--runs", help="build the report from this runs.csv (as a report wrote it) instead of a store")
    p.add_argument("--reference", help="published numbers to compare against (CSV pair,method,top1 or Markdown)")
    p.add_argument("--name", help="report name (default: the matrix's or the experiment's)")
    p.add_argument("--out", default="outputs/reports", help="reports go to OUT/<name>/ (default: %(default)s)")
    p.add_argument("--no-plots", action="store_true", help="skip the figures")
    p.add_argument("--no-mlflow", action="store_true", help="do not log the report as an MLflow run")
    args = p.parse_args(hydra_style(sys.argv[1:] if argv is None else argv))
    args.uri = parsed_uri(args)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        table, out_dir, files, experiment_id = make_report(args)
    except (ValueError, FileNotFoundError, LookupError, ConfigError) as exc:
        print(f"kdexp-report: error: {exc}", file=sys.stderr)
        return 2
    print((out_dir / "table.md").read_text())
    if not args.no_mlflow and not args.runs:  # from a file: there may be no store to log to
        run_id = log_report(args, table, out_dir, experiment_id)
        print(f"logged as MLflow run {run_id} (kdexp.role=report)")
    print("wrote " + ", ".join(str(f) for f in files))
    return 0


def make_report(args: argparse.Namespace) -> tuple[Table, Path, list[Path], str | None]:
    from kdexp.bench.matrix import load_matrix
    from kdexp.report import render, runs_file

    stats.check_choice("test", args.test, stats.TESTS)
    stats.check_choice("correction", args.correction, stats.CORRECTIONS)
    matrix = load_matrix(args.matrix) if args.matrix else None
    metric = SELECT_METRICS[args.select]
    if args.runs:
        extra = [flag for flag, given in (("--experiment", args.experiment), ("--filter", args.filter),
                                          ("--tag", args.tag)) if given]
        if extra:
            raise ConfigError(f"{', '.join(extra)} select runs in a store; with --runs the file is the selection")
        runs, experiment_id = runs_file.read_runs(args.runs, metric), None
        names = sorted({r.experiment for r in runs if r.experiment}) or [Path(args.runs).parent.name]
    else:
        runs, names, experiment_id = store_runs(args, matrix)
    name = args.name or (matrix.name if matrix else "-".join(names))
    out_dir = Path(args.out) / name
    out_dir.mkdir(parents=True, exist_ok=True)
    runs_csv = out_dir / "runs.csv"
    if not (args.runs and runs_csv.resolve() == Path(args.runs).resolve()):
        runs_csv.write_text(runs_file.to_csv(runs), encoding="utf-8")
    runs = runs_file.read_runs(runs_csv, metric)  # the table comes from the file, whichever the source
    if matrix is not None:  # rows of a tuned matrix are its methods' tuned runs (the vanilla student has none)
        matrix.methods = matrix_rows(args.matrix, matrix.methods, args.paper_vs_tuned)
    records, notes = records_from_runs(runs, args.select, matrix)
    from kdexp.report.pareto import pareto_markdown
    from kdexp.report.tuned import (
        add_tuning_columns,
        paper_vs_tuned_markdown,
        settings_markdown,
        tuning_markdown,
        vanilla_control,
    )

    if matrix is not None:  # a tuned matrix's vanilla row: its tuned vanilla student
        records, matrix.methods = vanilla_control(records, matrix.methods)
    table = build_table(records, args.select, notes, pairs=matrix.pairs if matrix else None,
                        methods=matrix.methods if matrix else None,
                        expected_seeds=args.seeds or (len(matrix.seeds) if matrix else None),
                        test=args.test, correction=args.correction)

    rows = render.csv_rows(table)
    add_tuning_columns(table, rows, records)
    markdown = render.to_markdown(table, f"kdexp report: {name}", args.ci)
    for section in (paper_vs_tuned_markdown(table), tuning_markdown(table, records),
                    settings_markdown(table, records), pareto_markdown(runs, args.select)):
        markdown += "\n" + section if section else ""
    if args.reference:
        from kdexp.report.reference import add_reference_columns, load_reference, reference_markdown

        reference = load_reference(args.reference)
        add_reference_columns(table, rows, reference)
        markdown += "\n" + reference_markdown(table, reference)
    markdown += f"\nRegenerate from the per-run file: `kdexp-report --runs runs.csv {table_options(args)}`\n"
    files = [runs_csv, out_dir / "table.md", out_dir / "table.tex", out_dir / "results.csv"]
    files[1].write_text(markdown, encoding="utf-8")
    files[2].write_text(render.to_latex(table, f"kdexp-{name}", args.ci), encoding="utf-8")
    files[3].write_text(render.to_csv(rows), encoding="utf-8")
    if not args.no_plots:
        from kdexp.report.plots import write_plots

        figures, skipped = write_plots(table, out_dir, runs)
        files += figures
        if skipped:
            print(f"kdexp-report: {skipped}", file=sys.stderr)
    return table, out_dir, files, experiment_id


def store_runs(args: argparse.Namespace, matrix) -> tuple[list, list[str], str]:
    """The FINISHED student runs of the store as runs.csv lines, the experiment names and the first's id."""
    from mlflow.tracking import MlflowClient

    from kdexp.report.runs_file import from_mlflow
    from kdexp.tracking.stores import sqlite_file

    names = args.experiment or [(matrix.experiment if matrix else None) or DEFAULT_EXPERIMENT]
    db = sqlite_file(args.uri)
    if db is not None and not db.is_file():
        raise FileNotFoundError(f"no tracking store at {db} (run kdexp-train first, or pass --uri or --root)")
    client = MlflowClient(tracking_uri=args.uri)
    experiments = [client.get_experiment_by_name(n) for n in names]
    if None in experiments:
        known = ", ".join(sorted(e.name for e in client.search_experiments()))
        raise LookupError(f"no experiment {names[experiments.index(None)]!r} in {args.uri} (experiments: {known})")
    query = run_filter(args.filter, args.tag)
    runs = search_runs(client, [e.experiment_id for e in experiments], query)
    if not runs:
        raise LookupError(f"no FINISHED student runs in experiment(s) {', '.join(names)}"
                          + (f" matching {query!r}" if query else ""))
    experiment_names = {e.experiment_id: e.name for e in experiments}
    parents: dict[str, str | None] = {}  # a sweep's parent run id -> its objectives param
    out = []
    for run in runs:
        parent = run.data.tags.get("mlflow.parentRunId") if run.data.tags.get("optuna.study_name") else None
        if parent and parent not in parents:
            try:
                parents[parent] = client.get_run(parent).data.params.get("objectives")
            except Exception:  # noqa: BLE001 - a deleted parent: the cell falls back to its latest trial
                parents[parent] = None
        out.append(from_mlflow(run, experiment_names[run.info.experiment_id], args.matrix or "",
                               parents.get(parent) if parent else None))
    return out, names, experiments[0].experiment_id


def table_options(args: argparse.Namespace) -> str:
    """The options that shape the table (not where runs come from or where files go), as a command line."""
    options = [f"--matrix {args.matrix}"] if args.matrix else []
    options += [f"--select {args.select}", f"--test {args.test}", f"--correction {args.correction}"]
    options += [f"--seeds {args.seeds}"] if args.seeds else []
    options += ["--ci"] if args.ci else []
    options += ["--paper-vs-tuned"] if args.paper_vs_tuned else []
    options += [f"--reference {args.reference}"] if args.reference else []
    return " ".join(options)


def matrix_rows(name_or_path: str, methods: list[str], both: bool) -> list[str]:
    """A matrix's row labels: its methods, tuned ones as <method>+tuned when the file sets tune.enabled
    (a method without a search space is never tuned); both kinds with `both`."""
    from omegaconf import OmegaConf

    from kdexp.bench.matrix import matrix_path
    from kdexp.report.compare import TUNED_SUFFIX, searched_keys

    raw = OmegaConf.to_container(OmegaConf.load(matrix_path(name_or_path)))
    tuned = bool((raw.get("tune") or {}).get("enabled")) or both
    rows = []
    for method in methods:
        if not tuned or not searched_keys(method):
            rows.append(method)
            continue
        rows += [method, method + TUNED_SUFFIX] if both else [method + TUNED_SUFFIX]
    return rows


def run_filter(extra: str | None, tags: list[str]) -> str | None:
    """--filter and every --tag KEY=VALUE, joined with AND (MLflow's filter syntax)."""
    parts = [extra] if extra else []
    for item in tags:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--tag {item!r}: write it as KEY=VALUE, e.g. --tag data=cifar100")
        parts.append(f"tags.`{key}` = '{value}'")
    return " AND ".join(parts) or None


def log_report(args: argparse.Namespace, table: Table, out_dir: Path, experiment_id: str) -> str:
    from mlflow.tracking import MlflowClient

    import kdexp

    client = MlflowClient(tracking_uri=args.uri)
    tags = {"kdexp.role": "report", "kdexp.version": kdexp.__version__, "kdexp.select": table.select,
            "kdexp.report": out_dir.name}
    run = client.create_run(experiment_id, run_name=f"report:{out_dir.name}", tags=tags)
    run_id = run.info.run_id
    params = {"select": table.select, "metric": SELECT_METRICS[table.select], "seeds": table.expected_seeds,
              "matrix": args.matrix or "", "filter": run_filter(args.filter, args.tag) or "",
              "pairs": len(table.pairs),
              "methods": len(table.rows) - 2}
    for key, value in params.items():
        client.log_param(run_id, key, str(value))
    client.log_artifacts(run_id, str(out_dir), artifact_path="report")
    client.set_terminated(run_id, "FINISHED")
    return run_id
