"""Significance against the vanilla student, the settings each row ran with, and paper vs tuned settings.

Significance: Welch's t-test (two-sided, unequal variances; scipy.stats.ttest_ind) of a row's per-seed
accuracies against the vanilla student's of the same pair, p < ALPHA; undefined with fewer than two seeds
on either side or no variance on both. Tuned rows are the same method with tag kdexp.tuned=true (label
"<method>+tuned"); their settings are what the study chose (run params distill.*).
"""

from __future__ import annotations

import math
import statistics

ALPHA = 0.05
MARK = "*"
TUNED_SUFFIX = "+tuned"
SIGNIFICANCE_NOTE = (f"{MARK}: differs from the vanilla student of the pair beyond seed noise (Welch's t-test, "
                     f"two-sided, p < {ALPHA}; needs ≥ 2 seeds on both sides).")


def welch_p(a: list[float], b: list[float]) -> float | None:
    """Two-sided p-value of Welch's t-test (as scipy.stats.ttest_ind(equal_var=False), written out so that
    a group without variance, e.g. three equal accuracies, gives the exact answer), or None if undefined."""
    if len(a) < 2 or len(b) < 2:
        return None
    from scipy.stats import t as student_t

    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    if va + vb == 0:
        return None
    t = (statistics.fmean(a) - statistics.fmean(b)) / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    return float(2 * student_t.sf(abs(t), df))


def base_method(row: str) -> str:
    return row.removesuffix(TUNED_SUFFIX)


def searched_keys(row: str) -> list[str]:
    """The run params a row's method tunes (conf/search/<method>.yaml); [] for unknown methods."""
    from kdexp.bench.tuning import search_space

    try:
        return list(search_space(base_method(row)))
    except ValueError:
        return []


def settings_text(settings: dict[str, str] | None) -> str:
    if not settings:
        return "–"
    return ", ".join(f"{k.removeprefix('distill.')}={_short(v)}" for k, v in settings.items())


def _short(value: str) -> str:
    try:
        return f"{float(value):.3g}"
    except ValueError:
        return value
