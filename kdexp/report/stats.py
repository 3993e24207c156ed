"""The statistics of a report: a method's seeds against the vanilla student's, and family-wise control.

Runs pair by seed (the same seed gives the same student init and data order to every method), so the
default test is paired: the t-test on per-seed differences (or Wilcoxon's signed-rank test); a cell whose
seeds do not all pair with the vanilla student's falls back to Welch's t-test, and says so. The 95 %
confidence interval of Δ is the paired t interval when paired, Welch's otherwise. p-values of the methods of
one column (one pair) form a family, adjusted by Holm (default), Bonferroni or Benjamini–Hochberg.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

from kdexp.config.errors import ConfigError

PAIRED_T, WILCOXON, WELCH = "paired-t", "wilcoxon", "welch"
TESTS = {
    PAIRED_T: "paired t-test on per-seed differences",
    WILCOXON: "Wilcoxon signed-rank test on per-seed differences",
    WELCH: "Welch's t-test",
}
CORRECTIONS = {
    "holm": "Holm's step-down correction",
    "bonferroni": "Bonferroni's correction",
    "bh": "Benjamini–Hochberg's false-discovery-rate correction",
    "none": "no multiple-comparison correction",
}
CONFIDENCE = 0.95


@dataclass(frozen=True)
class Comparison:
    """One method's cell against the vanilla student of its pair."""

    test: str  # the test actually used (a paired one falls back to WELCH when seeds do not pair)
    n: int  # pairs for a paired test, else the smaller group
    p: float | None  # two-sided; None when undefined (fewer than 2 seeds, or no variance)
    ci: tuple[float, float] | None  # 95 % CI of Δ = mean(row) − mean(vanilla), percentage points


def check_choice(kind: str, value: str, choices) -> str:
    """`value` if it is one of `choices`, else a ConfigError naming both (one line, exit 2 in the CLIs)."""
    if value not in choices:
        raise ConfigError(f"--{kind} {value!r} is invalid: choose one of {', '.join(choices)}")
    return value


def compare(row: dict[str, float], vanilla: dict[str, float], test: str = PAIRED_T) -> Comparison:
    """`row`, `vanilla`: {seed: accuracy}. A paired test needs every seed on both sides; otherwise Welch.

    Args:
        row: the method's accuracy per seed.
        vanilla: the vanilla student's accuracy per seed, same pair.
        test: PAIRED_T, WILCOXON or WELCH.
    Returns:
        The test used, its n, the two-sided p-value and the 95 % CI of Δ (None where undefined).
    """
    check_choice("test", test, TESTS)
    if test != WELCH and set(row) == set(vanilla) and len(row) >= 2:
        diffs = [row[s] - vanilla[s] for s in sorted(row)]
        ci = paired_ci(diffs)
        p = paired_t_p(diffs) if test == PAIRED_T else wilcoxon_p(diffs)
        return Comparison(test, len(diffs), p, ci)
    a, b = list(row.values()), list(vanilla.values())
    return Comparison(WELCH, min(len(a), len(b)), welch_p(a, b), welch_ci(a, b))


def _t_quantile(df: float) -> float:
    from scipy.stats import t as student_t

    return float(student_t.ppf(0.5 + CONFIDENCE / 2, df))


def paired_t_p(diffs: list[float]) -> float | None:
    """Two-sided p of the one-sample t-test of the differences against 0 (scipy.stats.ttest_rel);
    None when the differences have no variance (t would be 0/0 or infinite on rounded accuracies)."""
    if len(diffs) < 2 or statistics.stdev(diffs) == 0:
        return None
    from scipy.stats import t as student_t

    t = statistics.fmean(diffs) / (statistics.stdev(diffs) / math.sqrt(len(diffs)))
    return float(2 * student_t.sf(abs(t), len(diffs) - 1))


def paired_ci(diffs: list[float]) -> tuple[float, float] | None:
    if len(diffs) < 2:
        return None
    mean, half = statistics.fmean(diffs), _t_quantile(len(diffs) - 1) * statistics.stdev(diffs) / math.sqrt(len(diffs))
    return mean - half, mean + half


def wilcoxon_p(diffs: list[float]) -> float | None:
    """Two-sided p of scipy.stats.wilcoxon (exact for small n; zero differences dropped); None when every
    difference is zero. With 3 seeds its smallest p is 0.25: it can never mark a cell there."""
    if not any(diffs):
        return None
    from scipy.stats import wilcoxon

    return float(wilcoxon(diffs).pvalue)


def welch_p(a: list[float], b: list[float]) -> float | None:
    """Two-sided p of Welch's t-test (as scipy.stats.ttest_ind(equal_var=False), written out so that a group
    without variance, e.g. three equal accuracies, gives the exact answer), or None if undefined."""
    se = _welch_se(a, b)
    if se is None:
        return None
    from scipy.stats import t as student_t

    t = (statistics.fmean(a) - statistics.fmean(b)) / se[0]
    return float(2 * student_t.sf(abs(t), se[1]))


def welch_ci(a: list[float], b: list[float]) -> tuple[float, float] | None:
    se = _welch_se(a, b)
    if se is None:
        return None
    diff, half = statistics.fmean(a) - statistics.fmean(b), _t_quantile(se[1]) * se[0]
    return diff - half, diff + half


def _welch_se(a: list[float], b: list[float]) -> tuple[float, float] | None:
    """(standard error of the difference of means, Welch–Satterthwaite df), None if undefined."""
    if len(a) < 2 or len(b) < 2:
        return None
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    if va + vb == 0:
        return None
    return math.sqrt(va + vb), (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))


def adjust(p_values: list[float], correction: str = "holm") -> list[float]:
    """Adjusted p-values of one family, in the input order (compare each with α).

    Args:
        p_values: raw two-sided p-values of the family (the methods of one column).
        correction: holm, bonferroni, bh or none.
    Returns:
        Adjusted p-values, capped at 1; Holm and BH keep the order of the raw ones (monotone).
    """
    check_choice("correction", correction, CORRECTIONS)
    m = len(p_values)
    if correction == "none" or m == 0:
        return list(p_values)
    if correction == "bonferroni":
        return [min(1.0, m * p) for p in p_values]
    order = sorted(range(m), key=lambda i: p_values[i])
    out = [0.0] * m
    if correction == "holm":  # step-down: the k-th smallest times (m − k), running maximum
        running = 0.0
        for k, i in enumerate(order):
            running = max(running, min(1.0, (m - k) * p_values[i]))
            out[i] = running
        return out
    running = 1.0  # bh, step-up: the k-th smallest times m / k, running minimum from the largest
    for k in range(m - 1, -1, -1):
        i = order[k]
        running = min(running, m * p_values[i] / (k + 1))
        out[i] = running
    return out
