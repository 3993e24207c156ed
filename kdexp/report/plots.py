"""Figures of a report: accuracy versus parameters and versus latency, a method ranking, and the Pareto front
of a multi-objective sweep.

matplotlib is an optional dependency (`pip install 'kdexp[plots]'`); without it the report skips the
figures and says so, the tables are written all the same.
"""

from __future__ import annotations

import statistics
from pathlib import Path

from kdexp.report.collect import TEACHER, VANILLA
from kdexp.report.sweeps import STUDY_TAG, objectives, pareto_front, studies
from kdexp.report.table import Table, row_label

MISSING_MATPLOTLIB = "matplotlib is not installed: figures skipped (pip install 'kdexp[plots]')"


def pyplot():
    """matplotlib.pyplot on a file-only backend, or None when matplotlib is missing."""
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")  # reports are written on headless machines
    import matplotlib.pyplot as plt

    return plt


def write_plots(table: Table, out_dir: Path, runs: list = ()) -> tuple[list[Path], str | None]:
    """Returns (files written, a message when figures were skipped). `runs`: the report's runs, for the
    Pareto front of each multi-objective sweep among them."""
    plt = pyplot()
    if plt is None:
        return [], MISSING_MATPLOTLIB
    files = [
        cost_plot(plt, table, "params", "parameters", out_dir / "accuracy_vs_params.png"),
        cost_plot(plt, table, "latency_ms", "CPU latency, batch 1 (ms)", out_dir / "accuracy_vs_latency.png"),
        ranking_plot(plt, table, out_dir / "method_ranking.png"),
    ]
    for i, trials in enumerate(studies(list(runs)).values()):
        files.append(pareto_plot(plt, trials, out_dir / f"pareto_front{'' if i == 0 else f'_{i}'}.png"))
    return [f for f in files if f is not None], None


def cost_plot(plt, table: Table, attr: str, xlabel: str, path: Path) -> Path | None:
    """Every pair's students at their architecture's cost (the median over the pair's student runs: the
    method does not change it, and single latency timings are noisy), one colour per method; teachers
    as stars. Shows how far each student sits below its teacher at a fraction of the cost."""
    student_rows = [r for r in table.rows if r != TEACHER]
    colours = {row: f"C{i % 10}" for i, row in enumerate(student_rows)}
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    drawn = set()
    for pair in table.pairs:
        costs = [getattr(c, attr) for r in student_rows if (c := table.cell(r, pair)) and getattr(c, attr)]
        if not costs:
            continue
        x = statistics.median(costs)
        for row in student_rows:
            if (cell := table.cell(row, pair)) is None:
                continue
            ax.errorbar(x, cell.mean, yerr=cell.std or 0, fmt="o", color=colours[row], ms=5, capsize=2,
                        label=None if row in drawn else row_label(row))
            drawn.add(row)
        ax.annotate(pair.replace("->", "→"), (x, max(table.cell(r, pair).mean for r in student_rows
                                                     if table.cell(r, pair))),
                    textcoords="offset points", xytext=(4, 6), fontsize=7)
        teacher = table.cell(TEACHER, pair)
        if teacher is not None and getattr(teacher, attr):
            ax.scatter(getattr(teacher, attr), teacher.mean, marker="*", s=160, color="black",
                       label=None if TEACHER in drawn else row_label(TEACHER))
            drawn.add(TEACHER)
    if not drawn:
        plt.close(fig)
        return None
    ax.set_xscale("log")
    ax.tick_params(axis="x", which="minor", labelbottom=False)  # minor log labels overlap
    ax.set_xlabel(xlabel)
    ax.set_ylabel(f"top-1 test accuracy (%), {table.select}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def ranking(table: Table) -> tuple[list[tuple[str, float, float]], str]:
    """[(method, mean rank over pairs, bar value)] best first, and what the bar shows: the mean Δ versus the
    vanilla student, or the mean accuracy when no pair has a vanilla row (e.g. a sweep of one method)."""
    methods = [r for r in table.rows if r not in (TEACHER, VANILLA)]
    ranks = {m: [] for m in methods}
    for pair in table.pairs:
        present = sorted((m for m in methods if table.cell(m, pair)), key=lambda m: -table.cell(m, pair).mean)
        for rank, method in enumerate(present, start=1):
            ranks[method].append(rank)
    with_delta = any(table.delta(m, p) is not None for m in methods for p in table.pairs)
    out = []
    for method in sorted((m for m in methods if ranks[m]), key=lambda m: statistics.fmean(ranks[m])):
        if with_delta:
            values = [d for p in table.pairs if (d := table.delta(method, p)) is not None]
        else:
            values = [c.mean for p in table.pairs if (c := table.cell(method, p))]
        out.append((method, statistics.fmean(ranks[method]), statistics.fmean(values) if values else 0.0))
    shown = "mean Δ vs. vanilla student (pp)" if with_delta else "mean top-1 accuracy (%), no vanilla row"
    return out, shown


def ranking_plot(plt, table: Table, path: Path) -> Path | None:
    """Methods by their mean rank over pairs (1 = best student of the column); bars show mean Δ (or accuracy)."""
    ranked, shown = ranking(table)
    if not ranked:
        return None
    fig, ax = plt.subplots(figsize=(6, 0.35 * len(ranked) + 1.5))
    values = [v for _, _, v in ranked]
    delta = shown.startswith("mean Δ")
    ax.barh(range(len(ranked)), values,
            color=["tab:green" if v >= 0 or not delta else "tab:red" for v in values])
    ax.set_yticks(range(len(ranked)), [f"{row_label(m)} (rank {r:.1f})" for m, r, _ in ranked], fontsize=8)
    ax.invert_yaxis()
    if delta:
        ax.axvline(0, color="black", lw=0.8)
    else:
        ax.set_xlim(min(values) - 5, max(values) + 1)  # accuracies: the differences are what matters
    ax.set_xlabel(f"{shown}, {table.select}\nordered by mean rank over pairs", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def pareto_plot(plt, trials: list, path: Path) -> Path | None:
    """Every trial of a two-or-more-objective sweep by its first two objectives; the front joined in red."""
    objs = objectives(trials[0])
    (y_metric, y_dir), (x_metric, x_dir) = objs[0], objs[1]
    points = [(r.data.metrics[x_metric], r.data.metrics[y_metric]) for r in trials
              if x_metric in r.data.metrics and y_metric in r.data.metrics]
    if not points:
        return None
    front = sorted((r.data.metrics[x_metric], r.data.metrics[y_metric]) for r in pareto_front(trials))
    fig, ax = plt.subplots(figsize=(6, 4.5))
    ax.scatter(*zip(*points), s=18, color="tab:gray", label=f"trials ({len(points)})")
    ax.plot(*zip(*front), "o-", color="tab:red", ms=6, label=f"Pareto front ({len(front)})")
    ax.set_xlabel(f"{x_metric} ({x_dir})")
    ax.set_ylabel(f"{y_metric} ({y_dir})")
    ax.set_title(f"sweep {trials[0].data.tags.get(STUDY_TAG, '?')}", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
