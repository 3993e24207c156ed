"""What a finished Hydra job means for its Optuna trial."""

from __future__ import annotations

import math
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from numbers import Real
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from optuna.trial import TrialState

from kdexp.config.errors import ConfigError

from .trial import is_pruned_error


@dataclass
class TrialOutcome:
    state: TrialState
    values: list[float] | None = None
    reason: str = ""  # why it failed or was pruned, for logs and the failure-budget error
    details: str = ""  # traceback when the exception still has one (in-process jobs)


def job_outcome(ret: JobReturn, metrics: Sequence[str] | None, n_objectives: int = 1) -> TrialOutcome:
    """PRUNED for optuna.TrialPruned; FAIL for other errors and missing or non-finite values.

    ``metrics`` names the keys of a dict result (kdexp's objectives); None takes the result as the official
    plugin does: a number for one objective, a tuple/list of numbers for several. A dict result without
    named objectives is a config error (ConfigError), not a failed trial.

    ``JobReturn.return_value`` re-raises a failed job's exception, so read ``_return_value``;
    with joblib or submitit that exception has been pickled, which keeps its class.
    """
    if ret.status != JobStatus.COMPLETED:
        exc = ret._return_value
        if is_pruned_error(exc):
            return TrialOutcome(TrialState.PRUNED, reason=str(exc))
        details = ""
        if isinstance(exc, BaseException) and exc.__traceback__ is not None:
            details = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        return TrialOutcome(TrialState.FAIL, reason=f"{type(exc).__name__}: {exc}", details=details)
    result = ret._return_value
    if metrics is None:
        if isinstance(result, Mapping):
            example = ",".join(f"{{metric:{k},direction:maximize}}" for k in list(result)[:n_objectives])
            raise ConfigError(f"the task returned a dict (keys: {', '.join(map(str, result))}); name the "
                              f"objective(s) by key: 'hydra.sweeper.objectives=[{example}]'")
        raw = [result] if n_objectives == 1 else result
        if isinstance(raw, (str, bytes)) or not isinstance(raw, Sequence) or len(raw) != n_objectives:
            return TrialOutcome(TrialState.FAIL, reason=f"the task returned {result!r}; {n_objectives} "
                                "objective(s) need " + ("a number" if n_objectives == 1 else
                                                        f"a tuple/list of {n_objectives} numbers"))
        named = [(f"value {i}", _number(v)) for i, v in enumerate(raw)]
    else:
        named = [(metric, _metric(result, metric, single=len(metrics) == 1)) for metric in metrics]
    values = []
    for metric, value in named:
        if value is None:
            keys = sorted(result) if isinstance(result, dict) else type(result).__name__
            return TrialOutcome(
                TrialState.FAIL, reason=f"metric {metric!r} missing from the job's result ({keys})"
            )
        if not math.isfinite(value):
            return TrialOutcome(TrialState.FAIL, reason=f"metric {metric!r} is {value}")
        values.append(value)
    return TrialOutcome(TrialState.COMPLETE, values=values)


def _metric(result: Any, metric: str, single: bool) -> float | None:
    if isinstance(result, dict):
        return _number(result.get(metric))
    if single:  # a bare number is accepted for a single objective, like the official plugin
        return _number(result)
    return None


def _number(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:  # floats, numpy scalars, 0-d tensors
        return float(value) if isinstance(value, Real) or hasattr(value, "__float__") else None
    except (TypeError, ValueError):
        return None
