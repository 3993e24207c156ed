"""Recount the significance marks of a committed Markdown table from its printed numbers.

Tables committed before docs/results/ existed print per cell `mean ± SD (Δ)` and a `*` for Welch's p < 0.05
without correction; their per-seed numbers were not committed. From mean, SD and n this recomputes Welch's p
(scipy.stats.ttest_ind_from_stats; the printed two decimals make it approximate) and Holm's adjustment over
the marked-or-not method rows of each column (kdexp.report.stats.adjust). A paired test needs the per-seed
numbers and cannot be recomputed. Usage:

    python benchmarks/recount_marks.py docs/fashion_full_benchmark.md --seeds 5
    python benchmarks/recount_marks.py docs/fashion_cpu_benchmark.md --seeds 3 --only "(tuned)"
    python benchmarks/recount_marks.py docs/fashion_cpu_benchmark.md --seeds 3 --paper-vs-tuned
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from scipy.stats import ttest_ind_from_stats

from kdexp.report.stats import adjust

CELL = re.compile(r"^\**(-?\d+\.\d+)\**\s*±\s*(\d+\.\d+)\s*\(([+-]\d+\.\d+)\)(\*?)")


def tables(text: str) -> list[list[list[str]]]:
    """Every Markdown table whose header starts with `| Teacher → Student`, as rows of cells."""
    out, current = [], None
    for line in text.splitlines():
        if line.startswith("| Teacher → Student"):
            current = [[c.strip() for c in line.strip().strip("|").split("|")]]
            out.append(current)
        elif current is not None and line.startswith("|"):
            if not set(line) <= set("|-: "):
                current.append([c.strip() for c in line.strip().strip("|").split("|")])
        else:
            current = None
    return out


def recount(table: list[list[str]], seeds: int, only: str | None, correction: str) -> list[dict]:
    """Per column: marks printed, marks recomputed (Welch, raw), marks surviving the correction."""
    header, rows = table[0], table[1:]
    vanilla = next(r for r in rows if r[0] == "Student (vanilla)")
    out = []
    for j, pair in enumerate(header[1:], start=1):
        v_mean, v_sd = (float(x) for x in re.findall(r"\d+\.\d+", vanilla[j])[:2])
        found = []
        for row in rows:
            match = CELL.match(row[j])
            if not match or row[0] in ("Teacher", "Student (vanilla)") or (only and only not in row[0]):
                continue
            mean, sd, _, mark = match.groups()
            p = ttest_ind_from_stats(float(mean), float(sd), seeds, v_mean, v_sd, seeds, equal_var=False).pvalue
            found.append((row[0], bool(mark), float(p)))
        adjusted = adjust([p for _, _, p in found], correction)
        out.append({"pair": pair, "family": len(found), "printed": [n for n, m, _ in found if m],
                    "raw": [n for n, _, p in found if p < 0.05],
                    "kept": [n for (n, _, _), q in zip(found, adjusted) if q < 0.05]})
    return out


def recount_paper_vs_tuned(table: list[list[str]], seeds: int, correction: str) -> list[dict]:
    """Per column: tuned rows against the same method's paper-settings row (Welch), corrected over the methods."""
    header, rows = table[0], {r[0]: r for r in table[1:]}
    out = []
    for j, pair in enumerate(header[1:], start=1):
        found = []
        for name in rows:
            tuned = rows.get(f"{name} (tuned)")
            paper_cell, tuned_cell = CELL.match(rows[name][j]), tuned and CELL.match(tuned[j])
            if paper_cell and tuned_cell:
                (m1, s1), (m0, s0) = (tuned_cell.group(1, 2)), (paper_cell.group(1, 2))
                p = ttest_ind_from_stats(float(m1), float(s1), seeds, float(m0), float(s0), seeds, equal_var=False)
                found.append((name, float(p.pvalue)))
        adjusted = adjust([p for _, p in found], correction)
        out.append({"pair": pair, "family": len(found), "printed": None,  # marked in another table
                    "raw": [n for n, p in found if p < 0.05],
                    "kept": [n for (n, _), q in zip(found, adjusted) if q < 0.05]})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("doc")
    parser.add_argument("--seeds", type=int, required=True, help="seeds per cell of the table")
    parser.add_argument("--only", help="only rows whose label contains this, e.g. '(tuned)'")
    parser.add_argument("--correction", default="holm")
    parser.add_argument("--paper-vs-tuned", action="store_true",
                        help="tuned rows against the same method's paper-settings row instead of the vanilla student")
    args = parser.parse_args()
    for i, table in enumerate(tables(Path(args.doc).read_text(encoding="utf-8"))):
        if not any(CELL.match(c) for row in table[1:] for c in row[1:]):
            continue  # a table without ± cells
        columns = (recount_paper_vs_tuned(table, args.seeds, args.correction) if args.paper_vs_tuned
                   else recount(table, args.seeds, args.only, args.correction))
        for col in columns:
            printed = "n/a" if col["printed"] is None else len(col["printed"])
            print(f"table {i} {col['pair']}: {col['family']} rows; printed marks {printed}, "
                  f"recomputed Welch p<0.05 {len(col['raw'])}, after {args.correction} {len(col['kept'])}: "
                  f"{', '.join(col['kept']) or '-'}")


if __name__ == "__main__":
    main()
