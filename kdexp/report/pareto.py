"""The Pareto-front section of a report on a multi-objective sweep (the figure is in kdexp.report.plots)."""

from __future__ import annotations

from kdexp.report.collect import SELECT_METRICS, run_method, run_pair, run_settings
from kdexp.report.compare import settings_text
from kdexp.report.sweeps import describe, objectives, pareto_front, studies, trial_number


def pareto_markdown(runs: list, select: str) -> str:
    """Per multi-objective sweep, its Pareto front: one line per trial on it, with the objectives, the
    searched settings and the test accuracy under the report's rule."""
    sections = []
    for study, trials in studies(runs).items():
        objs, front = objectives(trials[0]), pareto_front(trials)
        metric = SELECT_METRICS[select]
        lines = [f"## Pareto front of sweep {study}", "",
                 f"{len(front)} of {len(trials)} trial(s) are not dominated ({describe(objs)}); test top-1 (%) "
                 f"under `{select}` ({metric}), never used to choose.", "",
                 "| Trial | Pair | Method | " + " | ".join(m for m, _ in objs) + " | Test top-1 | Settings |",
                 "|---|---|---|" + "---|" * len(objs) + "---|---|"]
        for run in front:
            m = run.data.metrics
            values = " | ".join(f"{m[metric_name]:.4g}" for metric_name, _ in objs)
            test = f"{100 * m[metric]:.2f}" if metric in m else "–"
            settings = settings_text(run_settings(run, run_method(run)))
            lines.append(f"| {trial_number(run)} | {run_pair(run)} | {run_method(run)} | {values} | {test} | "
                         f"{settings} |")
        sections.append("\n".join(lines) + "\n")
    return "\n".join(sections)
