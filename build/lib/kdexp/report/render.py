"""The table as Markdown, LaTeX (booktabs) and CSV (long format: one line per row and pair)."""

from __future__ import annotations

import csv
import io

from kdexp.report.collect import SELECT_METRICS, TEACHER, VANILLA
from kdexp.report.compare import MARK
from kdexp.report.table import DECIMALS, Table, row_label

MISSING = {"md": "–", "tex": "--"}  # never 0: a missing cell was not measured
CSV_COLUMNS = ["pair", "teacher", "student", "row", "label", "n", "expected_seeds", "mean", "std",
               "delta_vs_vanilla", "p_vs_vanilla", "significant", "best", "fewer_seeds", "params", "latency_b1_ms",
               "values", "settings", "select", "metric"]


def fmt(value: float | None, signed: bool = False) -> str:
    if value is None:
        return ""
    return f"{value:+.{DECIMALS}f}" if signed else f"{value:.{DECIMALS}f}"


def cell_text(table: Table, row: str, pair: str, style: str) -> str:
    """`mean ± std (Δ)`, the mean in bold when best, then †(n=k) for fewer seeds than expected."""
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
        text += f" ({fmt(delta, signed=True)})"
    if table.significant(row, pair):
        text += MARK
    if table.few_seeds(row, pair):
        text += (" †" if style == "md" else r" $^\dagger$") + f"(n={cell.n})"
    return text


def to_markdown(table: Table, title: str) -> str:
    lines = [f"# {title}", "", table.caption(), "",
             "| Teacher → Student | " + " | ".join(table.pairs) + " |",
             "|---|" + "---|" * len(table.pairs)]
    for row in table.rows:
        cells = " | ".join(cell_text(table, row, p, "md") for p in table.pairs)
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


def to_latex(table: Table, label: str) -> str:
    """A booktabs table; `\\usepackage{booktabs}` in the preamble."""
    head = " & ".join(latex_escape(p.replace("->", "→")) for p in table.pairs)
    lines = [r"\begin{table}[t]", r"\centering", rf"\caption{{{latex_escape(table.caption())}}}",
             rf"\label{{tab:{latex_escape(label)}}}", r"\begin{tabular}{l" + "c" * len(table.pairs) + "}",
             r"\toprule", rf"Teacher $\rightarrow$ Student & {head} \\", r"\midrule"]
    for row in table.rows:
        cells = " & ".join(cell_text(table, row, p, "tex") for p in table.pairs)
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
            cell = table.cell(row, pair)
            out.append({
                "pair": pair, "teacher": teacher, "student": student, "row": row, "label": row_label(row),
                "n": cell.n if cell else 0, "expected_seeds": "" if row == TEACHER else table.expected_seeds,
                "mean": fmt(cell.mean) if cell else "", "std": fmt(cell.std) if cell else "",
                "delta_vs_vanilla": fmt(table.delta(row, pair), signed=True),
                "p_vs_vanilla": "" if (p := table.p_value(row, pair)) is None else f"{p:.4g}",
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
