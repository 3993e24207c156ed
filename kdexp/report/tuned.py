"""The report's tuning sections: the settings each row ran with (each study repeat's), paper settings beside
tuned ones, tuning variance beside seed variance, each row's student budget; a tuned matrix's vanilla row."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, replace

from kdexp.report.collect import TEACHER, VANILLA, Record
from kdexp.report.compare import ALPHA, MARK, TUNED_SUFFIX, settings_text, welch_p
from kdexp.report.render import fmt
from kdexp.report.table import row_label


def settings_markdown(table, records: list[Record] | None = None) -> str:
    """One line per method row: the searched settings each pair's runs used (paper or tuned; with `records`,
    each study repeat's choice as r0: …; r1: …)."""
    rows = [r for r in table.rows if any(table.settings.get((r, p)) for p in table.pairs)]
    if not rows:
        return ""
    intro = ("What each row ran with: the keys its method searches (conf/search/), from the runs' params; "
             "tuned rows show the study's choice (rK: study repeat K's).")
    lines = ["## Settings", "", intro, "",
             "| Method | " + " | ".join(table.pairs) + " |", "|---|" + "---|" * len(table.pairs)]
    for row in rows:
        cells = [_settings_cell(table, records, row, p) for p in table.pairs]
        lines.append(f"| {row_label(row)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _settings_cell(table, records: list[Record] | None, row: str, pair: str) -> str:
    t = cell_tuning(records, row, pair) if records else None
    if t is None or t.repeats < 2:
        return settings_text(table.settings.get((row, pair)))
    return "; ".join(f"r{k}: {settings_text(s)}" for k, s in t.chosen.items())


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


def vanilla_control(records: list[Record], methods: list[str]) -> tuple[list[Record], list[str]]:
    """A tuned matrix's vanilla row is its tuned vanilla student (`none` searched over its own recipe with the
    same trial budget): its runs become the VANILLA row, so Δ and significance are against it. Unchanged when
    the paper-setting `none` is a row too (--paper-vs-tuned) or nothing tuned the vanilla student."""
    tuned = VANILLA + TUNED_SUFFIX
    if tuned not in methods or VANILLA in methods:
        return records, methods
    pairs = {r.pair for r in records if r.row == tuned}
    kept = [replace(r, row=VANILLA) if r.row == tuned else r for r in records
            if not (r.row == VANILLA and r.pair in pairs)]  # baseline runs never stand in for it
    return kept, [m for m in methods if m != tuned]


@dataclass
class CellTuning:
    """One (row, pair) of a tuned table split by study repeat."""

    repeat_means: list[float]  # per repeat, the mean over its seeds (%), repeats in order
    seed_sds: list[float]  # per repeat with >= 2 seeds, the sample SD over seeds
    steps: list[float]  # distinct student optimizer steps of its runs
    wall_s: float | None  # mean training wall time of one run
    chosen: dict[str, dict[str, str]]  # repeat -> the settings its study chose

    @property
    def repeats(self) -> int:
        return len(self.repeat_means)

    @property
    def tuning_sd(self) -> float | None:
        """Sample SD across repeats of the repeat means: what running the tuning again moves."""
        return statistics.stdev(self.repeat_means) if self.repeats > 1 else None

    @property
    def seed_sd(self) -> float | None:
        """Mean within-repeat SD over seeds: what another seed moves at fixed settings."""
        return statistics.fmean(self.seed_sds) if self.seed_sds else None


def cell_tuning(records: list[Record], row: str, pair: str) -> CellTuning | None:
    recs = [r for r in records if r.row == row and r.pair == pair]
    if not recs:
        return None
    groups: dict[str, list[Record]] = {}
    for r in sorted(recs, key=lambda r: _repeat_order(r.repeat)):
        groups.setdefault(r.repeat or "0", []).append(r)
    walls = [r.wall_s for r in recs if r.wall_s is not None]
    return CellTuning(
        repeat_means=[statistics.fmean(r.value for r in g) for g in groups.values()],
        seed_sds=[statistics.stdev([r.value for r in g]) for g in groups.values() if len(g) > 1],
        steps=sorted({r.steps for r in recs if r.steps is not None}),
        wall_s=statistics.fmean(walls) if walls else None,
        chosen={k: g[0].settings or {} for k, g in groups.items()},
    )


def _repeat_order(repeat: str | None) -> int:
    return int(repeat) if repeat and repeat.isdigit() else 0


def tuned_runs(records: list[Record]) -> bool:
    """Whether the table holds runs of a tuned matrix (tag kdexp.tune_repeat): only then the tuning section."""
    return any(r.repeat is not None for r in records)


def tuning_markdown(table, records: list[Record]) -> str:
    """Per student row and pair of a tuned table: study repeats, tuning SD beside seed SD, student optimizer
    steps and training wall; a warning where the rows of a pair did not get the same student steps."""
    if not tuned_runs(records):
        return ""
    student_rows = [r for r in table.rows if r != TEACHER]
    cells = {(row, pair): t for row in student_rows for pair in table.pairs
             if (t := cell_tuning(records, row, pair)) is not None}
    intro = ("Per row and pair: K study repeats (each its own sampler and trial seed; every repeat's choice trains "
             "every seed); the mean over seeds of each repeat; tuning SD = sample SD across repeats of those "
             "means; seed SD = mean over repeats of the sample SD over seeds; the student's optimizer steps (an "
             "init stage's included) and training wall time per run (mean). The main table's ± pools every run.")
    lines = ["## Tuning variance and budgets", "", intro, "",
             "| Method | Pair | K | repeat means | tuning SD | seed SD | student steps | train wall (s) |",
             "|---|---|---|---|---|---|---|---|"]
    for (row, pair), t in cells.items():
        steps = ", ".join(f"{s:.0f}" for s in t.steps) or "–"
        lines.append(f"| {row_label(row)} | {pair} | {t.repeats} | {' / '.join(fmt(m) for m in t.repeat_means)} "
                     f"| {fmt(t.tuning_sd) or '–'} | {fmt(t.seed_sd) or '–'} | {steps} | "
                     f"{'–' if t.wall_s is None else f'{t.wall_s:.1f}'} |")
    lines.append("")
    if any(r.row == VANILLA and r.repeat is not None for r in records):
        lines.append("- Student (vanilla) is the tuned vanilla student: its own study over lr, weight decay and "
                     "label smoothing (conf/search/none.yaml), with the same trial budget as every method.")
    for pair in table.pairs:
        budgets = {row: t.steps for (row, p), t in cells.items() if p == pair and t.steps}
        if len({tuple(s) for s in budgets.values()}) > 1:
            shown = ", ".join(f"{row_label(row)} {'/'.join(f'{s:.0f}' for s in steps)}"
                              for row, steps in budgets.items())
            lines.append(f"- ⚠ {pair}: rows differ in student optimizer steps ({shown}).")
    return "\n".join(lines).rstrip("\n") + "\n"


def add_tuning_columns(table, rows: list[dict], records: list[Record]) -> None:
    """results.csv of a tuned table: each student row's study repeats, repeat means, tuning and seed SD, the
    settings each study chose (`r<k>{key=value;...}` per repeat), student optimizer steps and training wall."""
    if not tuned_runs(records):
        return
    for out in rows:
        t = None if out["row"] == TEACHER else cell_tuning(records, out["row"], out["pair"])
        out.update({
            "tune_repeats": t.repeats if t else "",
            "repeat_means": ";".join(f"{m:.4f}" for m in t.repeat_means) if t else "",
            "tuning_sd": fmt(t.tuning_sd) if t else "", "seed_sd": fmt(t.seed_sd) if t else "",
            "study_settings": "|".join(f"r{k}{{{';'.join(f'{a}={b}' for a, b in s.items())}}}"
                                       for k, s in t.chosen.items()) if t and any(t.chosen.values()) else "",
            "student_steps": ";".join(f"{s:.0f}" for s in t.steps) if t else "",
            "train_seconds": "" if not t or t.wall_s is None else f"{t.wall_s:.2f}",
        })
