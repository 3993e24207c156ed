"""Published numbers to compare against (`kdexp-report --reference FILE`).

FILE is a CSV with columns `pair,method,top1` (pair "teacher->student", method a kdexp method, `teacher`
or `none`), or Markdown tables laid out as the report's own (first column the method, header the pairs,
e.g. the CRD/RepDistiller tables). Names match loosely: case, '-', '_' and bracketed remarks are
ignored, so "wrn40-2→ShuffleNetV1" finds wrn_40_2->shufflenetv1 and "DKD (mdistiller)" finds dkd.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

from kdexp.report.collect import TEACHER, VANILLA
from kdexp.report.render import fmt
from kdexp.report.table import Table, row_label

NUMBER = re.compile(r"^\s*(-?\d+(?:\.\d+)?)")
ROW_ALIASES = {"teacher": TEACHER, "student": VANILLA, "vanilla": VANILLA, "studentvanilla": VANILLA}


def norm(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", re.sub(r"\(.*?\)", "", name.lower()))


def norm_pair(pair: str) -> str:
    teacher, _, student = pair.replace("→", "->").partition("->")
    return f"{norm(teacher)}->{norm(student)}"


def norm_row(row: str) -> str:
    key = norm(row)
    return ROW_ALIASES.get(key, key)


def load_reference(path: str | Path) -> dict[tuple[str, str], float]:
    """{(normalised row, normalised pair): top-1 %}."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--reference {str(path)!r}: no such file")
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".csv":
        rows = csv.DictReader(text.splitlines())
        missing = {"pair", "method", "top1"} - set(rows.fieldnames or [])
        if missing:
            raise ValueError(f"--reference {path}: a CSV needs columns pair,method,top1, missing {sorted(missing)}")
        return {(norm_row(r["method"]), norm_pair(r["pair"])): float(r["top1"])
                for r in rows if r["top1"].strip()}
    return markdown_reference(text)


def markdown_reference(text: str) -> dict[tuple[str, str], float]:
    out: dict[tuple[str, str], float] = {}
    header: list[str] | None = None
    for line in text.splitlines():
        if not line.startswith("|"):
            header = None
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if header is None:
            header = [norm_pair(c) for c in cells[1:]]
        elif not set(line) <= set("|-: "):  # not the |---| rule
            for pair, value in zip(header, cells[1:]):
                number = NUMBER.match(value.replace("*", ""))
                if number:
                    out[(norm_row(cells[0]), pair)] = float(number.group(1))
    return out


def lookup(reference: dict, row: str, pair: str) -> float | None:
    for key in (norm_row(row), norm_row(row_label(row))):
        if (key, norm_pair(pair)) in reference:
            return reference[(key, norm_pair(pair))]
    return None


def add_reference_columns(table: Table, rows: list[dict], reference: dict) -> None:
    for line in rows:
        ref = lookup(reference, line["row"], line["pair"])
        line["reference"] = "" if ref is None else fmt(ref)
        line["diff_vs_reference"] = "" if ref is None or not line["mean"] else fmt(float(line["mean"]) - ref, True)


def reference_markdown(table: Table, reference: dict) -> str:
    """Ours − reference in percentage points; '–' where either side is missing."""
    lines = ["## Versus the reference", "",
             "Ours − reference, percentage points (ours under the same rule as above).", "",
             "| Teacher → Student | " + " | ".join(table.pairs) + " |", "|---|" + "---|" * len(table.pairs)]
    for row in table.rows:
        cells = []
        for pair in table.pairs:
            ref, cell = lookup(reference, row, pair), table.cell(row, pair)
            cells.append("–" if ref is None or cell is None else f"{fmt(cell.mean - ref, True)} (ref {fmt(ref)})")
        lines.append(f"| {row_label(row)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
