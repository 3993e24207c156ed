"""Figures of a report: accuracy versus parameters and versus latency, and a method ranking.

matplotlib is an optional dependency (`pip install 'kdexp[plots]'`); without it the report skips the
figures and says so, the tables are written all the same.
"""

from __future__ import annotations

import statistics
from pathlib import Path

from kdexp.report.collect import TEACHER, VANILLA
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


def write_plots(table: Table, out_dir: Path) -> tuple[list[Path], str | None]:
    """Returns (files written, a message when figures were skipped)."""
    plt = pyplot()
    if plt is None:
        return [], MISSING_MATPLOTLIB
    files = [
        cost_plot(plt, table, "params", "parameters", out_dir / "accuracy_vs_params.png"),
        cost_plot(plt, table, "latency_ms", "CPU latency, batch 1 (ms)", out_dir / "accuracy_vs_latency.png"),
        ranking_plot(plt, table, out_dir / "method_ranking.png"),
    ]
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


def ranking_plot(plt, table: Table, path: Path) -> Path | None:
    """Methods by their mean rank over pairs (1 = best student of the column); bars show mean Δ."""
    methods = [r for r in table.rows if r not in (TEACHER, VANILLA)]
    ranks, deltas = {m: [] for m in methods}, {m: [] for m in methods}
    for pair in table.pairs:
        present = sorted((m for m in methods if table.cell(m, pair)), key=lambda m: -table.cell(m, pair).mean)
        for rank, method in enumerate(present, start=1):
            ranks[method].append(rank)
            if (d := table.delta(method, pair)) is not None:
                deltas[method].append(d)
    ranked = sorted((m for m in methods if ranks[m]), key=lambda m: statistics.fmean(ranks[m]))
    if not ranked:
        return None
    fig, ax = plt.subplots(figsize=(6, 0.35 * len(ranked) + 1.2))
    values = [statistics.fmean(deltas[m]) if deltas[m] else 0.0 for m in ranked]
    ax.barh(range(len(ranked)), values, color=["tab:green" if v >= 0 else "tab:red" for v in values])
    ax.set_yticks(range(len(ranked)),
                  [f"{row_label(m)} (rank {statistics.fmean(ranks[m]):.1f})" for m in ranked], fontsize=8)
    ax.invert_yaxis()
    ax.axvline(0, color="black", lw=0.8)
    ax.set_xlabel(f"mean Δ vs. vanilla student (pp), {table.select}; ordered by mean rank over pairs")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
