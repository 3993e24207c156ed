"""Settings of rows and the paper-vs-tuned comparison: tuned rows are the same method with tag kdexp.tuned=true
(label "<method>+tuned"); their settings are what the study chose (run params distill.*). The tests and the
multiple-comparison control of the table are in kdexp.report.stats.
"""

from __future__ import annotations

from kdexp.report.stats import welch_p  # noqa: F401 - the paper-vs-tuned section's test (kdexp.report.tuned)

ALPHA = 0.05
MARK = "*"
TUNED_SUFFIX = "+tuned"


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
