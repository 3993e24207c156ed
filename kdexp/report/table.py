"""Aggregate records over seeds into the benchmark table: rows are methods, columns are pairs.

Layout of the CRD/RepDistiller tables: the teacher and the vanilla student on top, then one row per
method. Each cell is mean ± sample std (n−1) over seeds, its n, and Δ versus the vanilla student of
the same pair, with its test (paired by seed where it can), the p adjusted over the methods of the column
and the 95 % CI (kdexp.report.stats); the best student of each column is marked.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

from kdexp.report import stats
from kdexp.report.collect import SELECT_METRICS, TEACHER, VANILLA, Notes, Record
from kdexp.report.compare import ALPHA, MARK, TUNED_SUFFIX

DECIMALS = 2  # what the table shows; "best" compares at this precision, so ties are all marked
LABELS = {
    TEACHER: "Teacher", VANILLA: "Student (vanilla)", "kd": "KD", "dkd": "DKD", "fitnet": "FitNet",
    "at": "AT", "sp": "SP", "cc": "CC", "vid": "VID", "rkd": "RKD", "pkt": "PKT", "ab": "AB", "ft": "FT",
    "fsp": "FSP", "nst": "NST", "crd": "CRD", "crd_kd": "CRD+KD", "dist": "DIST", "kd_std": "KD (logit std.)",
    "ofd": "OFD", "reviewkd": "ReviewKD",
}
RULES = {
    "last": "the last epoch's weights",
    "best-val": "the weights of the epoch with the best validation accuracy (selected on the validation "
                "split, never on test)",
}


def row_label(row: str) -> str:
    if row.endswith(TUNED_SUFFIX):
        return row_label(row.removesuffix(TUNED_SUFFIX)) + " (tuned)"
    return LABELS.get(row, row)


@dataclass
class Cell:
    values: list[float]  # one per seed, in %
    params: float | None = None
    latency_ms: float | None = None
    seeds: list[str] = field(default_factory=list)  # parallel to values: the pairing unit, seed or seed/rK

    @property
    def by_seed(self) -> dict[str, float]:
        return dict(zip(self.seeds, self.values))

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    @property
    def std(self) -> float | None:
        """Sample standard deviation (n−1); undefined for a single seed."""
        return statistics.stdev(self.values) if self.n > 1 else None


@dataclass
class Table:
    pairs: list[str]
    rows: list[str]  # TEACHER, VANILLA, then the methods
    cells: dict[tuple[str, str], Cell]  # (row, pair) -> cell; absent = no finished run
    select: str
    expected_seeds: int
    notes: Notes = field(default_factory=Notes)
    settings: dict[tuple[str, str], dict[str, str]] = field(default_factory=dict)  # (row, pair) -> settings
    test: str = stats.PAIRED_T  # falls back to Welch per cell where seeds do not pair
    correction: str = "holm"  # over the methods of each column
    _family: dict = field(default_factory=dict, repr=False, compare=False)  # pair -> comparisons, once

    def cell(self, row: str, pair: str) -> Cell | None:
        return self.cells.get((row, pair))

    def delta(self, row: str, pair: str) -> float | None:
        """Δ versus the vanilla student of the same pair, in percentage points."""
        cell, vanilla = self.cell(row, pair), self.cell(VANILLA, pair)
        if row in (TEACHER, VANILLA) or cell is None or vanilla is None:
            return None
        return cell.mean - vanilla.mean

    def comparison(self, row: str, pair: str) -> stats.Comparison | None:
        """The row's seeds against the vanilla student's of the pair (None for the reference rows)."""
        return self._comparisons(pair).get(row, (None, None))[0]

    def p_value(self, row: str, pair: str) -> float | None:
        """The raw two-sided p-value (None: undefined)."""
        found = self.comparison(row, pair)
        return None if found is None else found.p

    def p_adjusted(self, row: str, pair: str) -> float | None:
        """p adjusted over the methods of the column whose p is defined (`self.correction`)."""
        return self._comparisons(pair).get(row, (None, None))[1]

    def significant(self, row: str, pair: str) -> bool:
        p = self.p_adjusted(row, pair)
        return p is not None and p < ALPHA

    def _comparisons(self, pair: str) -> dict[str, tuple[stats.Comparison, float | None]]:
        if pair in self._family:
            return self._family[pair]
        self._family[pair] = {}
        vanilla = self.cell(VANILLA, pair)
        if vanilla is None:
            return {}
        found = {row: stats.compare(cell.by_seed, vanilla.by_seed, self.test) for row in self.rows
                 if row not in (TEACHER, VANILLA) and (cell := self.cell(row, pair)) is not None}
        family = [row for row, c in found.items() if c.p is not None]
        adjusted = dict(zip(family, stats.adjust([found[r].p for r in family], self.correction)))
        self._family[pair] = {row: (c, adjusted.get(row)) for row, c in found.items()}
        return self._family[pair]

    def tests_used(self) -> list[str]:
        """The tests of the table's comparisons, the chosen one first."""
        used = {c.test for p in self.pairs for r in self.rows if (c := self.comparison(r, p)) is not None}
        return sorted(used, key=lambda t: (t != self.test, t))

    def is_best(self, row: str, pair: str) -> bool:
        if row == TEACHER or self.cell(row, pair) is None:
            return False
        shown = [round(c.mean, DECIMALS) for r in self.rows if r != TEACHER and (c := self.cell(r, pair))]
        return round(self.cell(row, pair).mean, DECIMALS) == max(shown)

    def few_seeds(self, row: str, pair: str) -> bool:
        cell = self.cell(row, pair)
        return row != TEACHER and cell is not None and cell.n < self.expected_seeds

    @property
    def missing(self) -> bool:
        return any(self.cell(r, p) is None for r in self.rows for p in self.pairs)

    @property
    def any_few_seeds(self) -> bool:
        return any(self.few_seeds(r, p) for r in self.rows for p in self.pairs)

    @property
    def study_repeats(self) -> int:
        """The most study repeats of any cell (pairing units seed/rK); 0 for runs without repeats."""
        return max((len({u.split("/r")[1] for u in c.seeds if "/r" in u}) for c in self.cells.values()), default=0)

    def caption(self) -> str:
        data = f" on {self.notes.data}" if self.notes.data else ""
        k = self.study_repeats
        runs = (f"{self.expected_seeds} seed(s) × {k} study repeats ({k * self.expected_seeds} runs: the ± holds "
                "tuning and seed variance)" if k > 1 else f"{self.expected_seeds} seed(s)")
        return (
            f"Top-1 test accuracy (%){data}; columns are teacher→student pairs. Students: mean ± sample "
            f"standard deviation (n−1) over {runs}; in brackets Δ versus the vanilla "
            f"student of the same pair. Selection rule `{self.select}` ({SELECT_METRICS[self.select]}): "
            f"test accuracy of {RULES[self.select]}, for every student row. Teacher: its final weights. "
            "Bold: the best student of each column. " + self.significance_note()
        )

    def significance_note(self) -> str:
        used = self.tests_used() or [self.test]
        test = stats.TESTS[used[0]] + "".join(
            f"; {stats.TESTS[t]} where a cell's seeds do not all pair with the vanilla student's" for t in used[1:])
        family = stats.CORRECTIONS[self.correction] + (
            ", p" if self.correction == "none" else " over the methods of each column, adjusted p")
        return (f"{MARK}: differs from the vanilla student of the pair ({test}, two-sided; {family} < {ALPHA}; "
                "needs ≥ 2 seeds on both sides). "
                f"Runs pair by seed{' and study repeat' if self.study_repeats > 1 else ''}: a seed gives every "
                "method the same student init and data order.")

    def footnotes(self) -> list[str]:
        out = []
        if self.missing:
            out.append("– no finished run for this cell (not zero: not measured).")
        if self.any_few_seeds:
            out.append(f"† fewer than {self.expected_seeds} seeds; n is given.")
        notes = self.notes
        if notes.vanilla_from_baseline:
            out.append("Student (vanilla) of " + ", ".join(sorted(notes.vanilla_from_baseline))
                       + ": the baseline runs (baseline=true, trained alone), not `distill=none` runs.")
        if notes.without_metric:
            out.append(f"{notes.without_metric} run(s) without {SELECT_METRICS[self.select]} left out.")
        if notes.duplicates:
            out.append(f"{notes.duplicates} older run(s) of an already present pair/method/seed ignored "
                       "(the latest counts).")
        if notes.sweep_trials:
            out.append(f"Sweep trials: each cell is its best trial by the sweep's objective(s) "
                       f"({'; '.join(sorted(notes.objectives))}; several: on the Pareto front, best by the first), "
                       f"{notes.sweep_trials} other trial(s) not tabled.")
        if notes.outside_matrix:
            out.append(f"{notes.outside_matrix} run(s) outside the matrix's pairs/methods/seeds ignored.")
        if len(notes.settings) > 1:
            out.append(f"⚠ These runs were trained with {len(notes.settings)} different settings (data, recipe, "
                       "trainer or teacher; tag kdexp.settings), e.g. after editing the matrix file and re-running "
                       "part of it: rows are not comparable until every cell is re-run with one setting.")
        return out


def pairing_unit(rec: Record) -> str:
    """What pairs two rows' runs: the seed (same init and data order), and in a tuned matrix with study repeats
    also the repeat, so that every run of a cell enters the test once (seed 0 of repeat 1 pairs with seed 0 of
    the vanilla row's repeat 1)."""
    return rec.seed if rec.repeat is None else f"{rec.seed}/r{rec.repeat}"


def build_table(records: list[Record], select: str, notes: Notes | None = None, pairs: list[str] | None = None,
                methods: list[str] | None = None, expected_seeds: int | None = None, test: str = stats.PAIRED_T,
                correction: str = "holm") -> Table:
    """`pairs`/`methods` fix the order and the expected cells (a matrix file's); by default every
    pair and method found, in first-seen order. `expected_seeds` defaults to the largest n found.
    `test`, `correction`: see kdexp.report.stats (checked here: a bad one is a ConfigError)."""
    stats.check_choice("test", test, stats.TESTS)
    stats.check_choice("correction", correction, stats.CORRECTIONS)
    grouped: dict[tuple[str, str], list[Record]] = {}
    for rec in records:
        grouped.setdefault((rec.row, rec.pair), []).append(rec)
    pairs = pairs or list(dict.fromkeys(r.pair for r in records))
    found = [r.row for r in records if r.row not in (TEACHER, VANILLA)]
    methods = [m for m in (methods or dict.fromkeys(found)) if m not in (TEACHER, VANILLA)]
    cells = {key: Cell([r.value for r in recs], _mean([r.params for r in recs]),
                       _mean([r.latency_ms for r in recs]), [pairing_unit(r) for r in recs])
             for key, recs in grouped.items() if key[1] in pairs}
    if expected_seeds is None:
        expected_seeds = max((c.n for (row, _), c in cells.items() if row != TEACHER), default=1)
    settings = {}
    for key, recs in grouped.items():
        seen = {tuple(sorted((r.settings or {}).items())) for r in recs}
        if recs[0].settings:
            settings[key] = recs[0].settings if len(seen) == 1 else {"settings": "differ between seeds"}
    return Table(pairs, [TEACHER, VANILLA, *methods], cells, select, expected_seeds, notes or Notes(), settings,
                 test, correction)


def _mean(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.fmean(known) if known else None
