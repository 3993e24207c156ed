"""The report's tuning sections: the settings each row ran with, and paper settings beside tuned ones."""

from __future__ import annotations

from kdexp.report.compare import ALPHA, MARK, TUNED_SUFFIX, settings_text, welch_p
from kdexp.report.render import fmt
from kdexp.report.table import row_label


def settings_markdown(table) -> str:
    """One line per method row: the searched settings each pair's runs used (paper or tuned)."""
    rows = [r for r in table.rows if any(table.settings.get((r, p)) for p in table.pairs)]
    if not rows:
        return ""
    intro = ("What each row ran with: the keys its method searches (conf/search/), from the runs' params; "
             "tuned rows show the study's choice.")
    lines = ["## Settings", "", intro, "",
             "| Method | " + " | ".join(table.pairs) + " |", "|---|" + "---|" * len(table.pairs)]
    for row in rows:
        cells = [settings_text(table.settings.get((row, p))) for p in table.pairs]
        lines.append(f"| {row_label(row)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def paper_vs_tuned_markdown(table) -> str:
    """Paper settings and tuned side by side per method and pair: both means, Δ (tuned − paper) and
    Welch's p between them; then the settings that changed."""
    methods = [r for r in table.rows if not r.endswith(TUNED_SUFFIX) and r + TUNED_SUFFIX in table.rows]
    if not methods:
        return ""
    intro = ("Per pair: paper → tuned (mean over seeds, %), Δ = tuned − paper, and Welch's p between the two; "
             f"{MARK} marks p < {ALPHA}. Below each, the settings: paper → tuned.")
    lines = ["## Paper settings vs tuned", "", intro, "",
             "| Method | " + " | ".join(table.pairs) + " |", "|---|" + "---|" * len(table.pairs)]
    for method in methods:
        cells, settings = [], []
        for pair in table.pairs:
            paper, tuned = table.cell(method, pair), table.cell(method + TUNED_SUFFIX, pair)
            if paper is None or tuned is None:
                cells.append("–")
            else:
                p = welch_p(tuned.values, paper.values)
                mark = MARK if p is not None and p < ALPHA else ""
                p_text = "" if p is None else f", p={p:.3f}"
                cells.append(f"{fmt(paper.mean)} → {fmt(tuned.mean)} ({fmt(tuned.mean - paper.mean, True)}"
                             f"{p_text}){mark}")
            settings.append(f"{settings_text(table.settings.get((method, pair)))} → "
                            f"{settings_text(table.settings.get((method + TUNED_SUFFIX, pair)))}")
        lines.append(f"| {row_label(method)} | " + " | ".join(cells) + " |")
        lines.append("| ↳ settings | " + " | ".join(settings) + " |")
    return "\n".join(lines) + "\n"
