"""The table as Markdown, LaTeX (booktabs) and CSV (long format: one line per row and pair)."""

from __future__ import annotations

import csv
import io

from kdexp.report.collect import SELECT_METRICS, TEACHER, VANILLA
from kdexp.report.compare import MARK
from kdexp.report.table import DECIMALS, Table, row_label

MISSING = {"md": "–", "tex": "--"}  # never 0: a missing cell was not measured
CI_NOTE = (" In square brackets: the 95 % confidence interval of Δ (paired t interval where the test is paired, "
           "Welch's otherwise).")
CSV_COLUMNS = ["pair", "teacher", "student", "row", "label", "n", "expected_seeds", "mean", "std",
               "delta_vs_vanilla", "ci95_low", "ci95_high", "test", "n_compared", "p_vs_vanilla", "correction",
               "p_adjusted", "significant", "best", "fewer_seeds", "params", "latency_b1_ms",
               "values", "settings", "select", "metric"]


def fmt(value: float | None, signed: bool = False) -> str:
    if value is None:
        return ""
    return f"{value:+.{DECIMALS}f}" if signed else f"{value:.{DECIMALS}f}"


def cell_text(table: Table, row: str, pair: str, style: str, ci: bool = False) -> str:
    """`mean ± std (Δ)`, the mean in bold when best, then †(n=k) for fewer seeds than expected;
    with `ci`, the 95 % CI of Δ in brackets after it."""
    cell = table.cell(row, pair)
    if cell is None:
        return MISSING[style]
    mean = fmt(cell.mean)
    if table.is_best(row, pair):
        mean = f"**{mean}**" if style == "md" else rf"\textbf{{{mean}}}"
    text = mean
    if cell.std is not None:
        text += (" ± " if style == "md" else r" $\pm$ ") + fmt(cell.std)
    delta = table.delta(row, pair)
    if delta is not None:
        comparison = table.comparison(row, pair)
        interval = comparison.ci if ci and comparison is not None else None
        bounds = f" [{fmt(interval[0], True)}, {fmt(interval[1], True)}]" if interval else ""
        text += f" ({fmt(delta, signed=True)}{bounds})"
    if table.significant(row, pair):
        text += MARK
    if table.few_seeds(row, pair):
        text += (" †" if style == "md" else r" $^\dagger$") + f"(n={cell.n})"
    return text


def to_markdown(table: Table, title: str, ci: bool = False) -> str:
    caption = table.caption() + (CI_NOTE if ci else "")
    lines = [f"# {title}", "", caption, "",
             "| Teacher → Student | " + " | ".join(table.pairs) + " |",
             "|---|" + "---|" * len(table.pairs)]
    for row in table.rows:
        cells = " | ".join(cell_text(table, row, p, "md", ci) for p in table.pairs)
        lines.append(f"| {row_label(row)} | {cells} |")
    lines.append("")
    lines += [f"- {note}" for note in table.footnotes()]
    return "\n".join(lines) + "\n"


def latex_escape(text: str) -> str:
    for char, escaped in (("\\", r"\textbackslash{}"), ("_", r"\_"), ("%", r"\%"), ("&", r"\&"), ("#", r"\#"),
                          ("→", r"$\rightarrow$"), ("−", "-"), ("±", r"$\pm$"), ("Δ", r"$\Delta$"),
                          ("†", r"$^\dagger$"), ("–", "--"), ("`", "")):
        text = text.replace(char, escaped)
    return text


def to_latex(table: Table, label: str, ci: bool = False) -> str:
    """A booktabs table; `\\usepackage{booktabs}` in the preamble."""
    head = " & ".join(latex_escape(p.replace("->", "→")) for p in table.pairs)
    caption = latex_escape(table.caption() + (CI_NOTE if ci else ""))
    lines = [r"\begin{table}[t]", r"\centering", rf"\caption{{{caption}}}",
             rf"\label{{tab:{latex_escape(label)}}}", r"\begin{tabular}{l" + "c" * len(table.pairs) + "}",
             r"\toprule", rf"Teacher $\rightarrow$ Student & {head} \\", r"\midrule"]
    for row in table.rows:
        cells = " & ".join(cell_text(table, row, p, "tex", ci) for p in table.pairs)
        lines.append(rf"{latex_escape(row_label(row))} & {cells} \\")
        if row == VANILLA:
            lines.append(r"\midrule")
    lines += [r"\bottomrule", r"\end{tabular}"]
    if table.footnotes():
        lines.append(r"\par\smallskip\footnotesize " + r" \\ ".join(latex_escape(n) for n in table.footnotes()))
    lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"


def csv_rows(table: Table) -> list[dict]:
    out = []
    for pair in table.pairs:
        teacher, _, student = pair.partition("->")
        for row in table.rows:
            cell, comparison = table.cell(row, pair), table.comparison(row, pair)
            out.append({
                "pair": pair, "teacher": teacher, "student": student, "row": row, "label": row_label(row),
                "n": cell.n if cell else 0, "expected_seeds": "" if row == TEACHER else table.expected_seeds,
                "mean": fmt(cell.mean) if cell else "", "std": fmt(cell.std) if cell else "",
                "delta_vs_vanilla": fmt(table.delta(row, pair), signed=True),
                "ci95_low": "" if comparison is None or comparison.ci is None else fmt(comparison.ci[0], True),
                "ci95_high": "" if comparison is None or comparison.ci is None else fmt(comparison.ci[1], True),
                "test": "" if comparison is None else comparison.test,
                "n_compared": "" if comparison is None else comparison.n,
                "p_vs_vanilla": "" if (p := table.p_value(row, pair)) is None else f"{p:.4g}",
                "correction": "" if comparison is None else table.correction,
                "p_adjusted": "" if (q := table.p_adjusted(row, pair)) is None else f"{q:.4g}",
                "significant": int(table.significant(row, pair)),
                "settings": ";".join(f"{k}={v}" for k, v in (table.settings.get((row, pair)) or {}).items()),
                "best": int(table.is_best(row, pair)), "fewer_seeds": int(table.few_seeds(row, pair)),
                "params": "" if not cell or cell.params is None else f"{cell.params:.0f}",
                "latency_b1_ms": "" if not cell or cell.latency_ms is None else f"{cell.latency_ms:.4f}",
                "values": ";".join(f"{v:.4f}" for v in cell.values) if cell else "",
                "select": table.select,
                "metric": "teacher/test_top1" if row == TEACHER else SELECT_METRICS[table.select],
            })
    return out


def to_csv(rows: list[dict]) -> str:
    columns = list(dict.fromkeys([*CSV_COLUMNS, *(k for r in rows for k in r)]))  # reference columns last
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()
