"""What a long run tells the terminal: one line per epoch of every stage, where its MLflow run is, and which
cell or trial of a multirun it is.

Everything goes through the `kdexp` logger at INFO. kdexp-train shows those lines by default: Hydra's default
`hydra/job_logging` sets the root logger to INFO with a console handler on stdout (and a file handler writing
`<run dir>/<job name>.log`), and kdexp never lowers the `kdexp` logger (only Lightning's own is kept at WARNING).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any

log = logging.getLogger("kdexp")
UI_ADDRESS = "http://127.0.0.1:5000"  # where `kdexp-ui` serves the MLflow UI by default


# -- arithmetic ----------------------------------------------------------------------------------------------
def eta_seconds(durations: list[float], done: int, total: int | None) -> float | None:
    """Seconds left: the mean epoch times the epochs still to run (None when the total is unknown).

    The first epoch is left out of the mean once a later one was timed: it carries one-off costs (filling the
    teacher-output cache, torch.compile, warm-up) that later epochs do not repeat. A mean, not the last epoch,
    so that one slow epoch does not swing the estimate.
    """
    if total is None or total < 0 or not durations:
        return None
    steady = durations[1:] or durations
    return sum(steady) / len(steady) * max(0, total - done)


def format_duration(seconds: float | None) -> str:
    """3.2 -> '3.2s', 75 -> '1m15s', 3725 -> '1h02m05s'; None -> '?'."""
    if seconds is None or math.isnan(seconds):
        return "?"
    if seconds < 60:
        return f"{seconds:.1f}s"
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


def _number(value: Any) -> float | None:
    if value is None:
        return None
    try:
        value = float(value)  # tensors from trainer.callback_metrics, or plain floats
    except (TypeError, ValueError):
        return None
    return None if math.isnan(value) else value


# -- one line per epoch --------------------------------------------------------------------------------------
class _EpochLines:
    """EpochProgress, a Lightning Callback: logs `<position> <stage> | epoch i/N | train loss | val acc |
    s/epoch | ETA` once per epoch. (Made a Callback on first use, so importing this module stays light.)

    The line for epoch i is written when epoch i+1 starts (or training ends): Lightning runs a plain callback's
    on_train_epoch_end *before* the module's, where DistillModule logs train/loss, so only then are both the
    epoch's train loss and its val accuracy in trainer.callback_metrics.
    """

    def __init__(self, stage: str, position: str | None = None, loss_key: str = "train/loss",
                 acc_key: str = "val/acc", logger: logging.Logger | None = None,
                 clock: Callable[[], float] = time.perf_counter):
        self.label = f"{position} {stage}" if position else stage
        self.loss_key, self.acc_key = loss_key, acc_key
        self.logger = logger or log
        self.clock = clock
        self.durations: list[float] = []
        self._epoch: int | None = None
        self._started = 0.0

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._report(trainer, last=False)
        self._epoch, self._started = trainer.current_epoch, self.clock()

    def on_train_end(self, trainer, pl_module) -> None:
        self._report(trainer, last=True)

    def _report(self, trainer, last: bool) -> None:
        if self._epoch is None:
            return
        self.durations.append(self.clock() - self._started)
        done = self._epoch + 1
        total = trainer.max_epochs if trainer.max_epochs is not None and trainer.max_epochs >= 0 else None
        metrics = trainer.callback_metrics
        self.logger.info(self.line(done, total, _number(metrics.get(self.loss_key)),
                                   _number(metrics.get(self.acc_key)), last))
        self._epoch = None

    def line(self, done: int, total: int | None, loss: float | None, acc: float | None, last: bool = False) -> str:
        of = f"{done}/{total}" if total is not None else f"{done}"
        loss_text = f"{loss:.4f}" if loss is not None else "-"
        acc_text = f"{acc:.4f}" if acc is not None else "-"
        eta = 0.0 if last else eta_seconds(self.durations, done, total)
        text = (f"{self.label} | epoch {of} | train loss {loss_text} | val acc {acc_text} | "
                f"{self.durations[-1]:.1f}s/epoch | ETA {format_duration(eta)}")
        if last and total is not None and done < total:
            text += " | stopped early"  # EarlyStopping, max_time, max_steps
        return text


def __getattr__(name: str) -> Any:
    if name == "EpochProgress":
        return _epoch_progress_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@lru_cache(maxsize=1)
def _epoch_progress_class() -> type:
    from lightning.pytorch.callbacks import Callback  # seconds to import: only when a stage is about to train

    return type("EpochProgress", (_EpochLines, Callback), {"__module__": __name__, "__doc__": _EpochLines.__doc__})


# -- where the run is ----------------------------------------------------------------------------------------
def run_link(run_id: str, experiment_id: str, tracking_uri: str) -> str:
    """The run's page in the MLflow UI: the tracking server itself for http(s) stores, else kdexp-ui's address."""
    page = f"#/experiments/{experiment_id}/runs/{run_id}"
    if tracking_uri.startswith(("http://", "https://")):
        return f"{tracking_uri.rstrip('/')}/{page}"
    return f"{UI_ADDRESS}/{page}"


def print_run_start(run_id: str, experiment_id: str, tracking_uri: str, name: str | None = None,
                    position: str | None = None) -> str:
    """Log where a run that just started is recorded (position: sweep_position()'s 'cell i/N'); returns the link."""
    link = run_link(run_id, experiment_id, tracking_uri)
    served = tracking_uri.startswith(("http://", "https://"))
    hint = "" if served else f" (serve it with: kdexp-ui --uri {tracking_uri})"
    what = f"run {name}" if name else "run"
    if position:
        what = f"{position}: {what}"
    log.info("%s started: MLflow run %s, experiment %s: %s%s", what, run_id, experiment_id, link, hint)
    return link


# -- which cell / trial of a multirun ------------------------------------------------------------------------
def sweep_position(conf: dict | None = None) -> str | None:
    """'trial i/N' in a kdexp_optuna sweep, 'cell i/N' in a matrix, 'job i/N' in another -m sweep; None in a
    single run (or outside Hydra). N is omitted when the sweep's size cannot be known.

    Optuna: i is the study's trial number (optuna_trial.trial_number, 0-based) + 1 and N the study's
    hydra.sweeper.n_trials, both study-wide, so a resumed study counts on. Basic sweeper: i is hydra.job.num
    + 1 and N the size of the grid saved in the sweep dir's multirun.yaml before the first job started.
    """
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return None
    hydra = HydraConfig.get()
    if hydra.mode != RunMode.MULTIRUN:
        return None
    target = str(hydra.sweeper.get("_target_", ""))
    trial = (conf or {}).get("optuna_trial") or {}
    if "kdexp_optuna" in target and trial.get("trial_number") is not None:
        return f"trial {int(trial['trial_number']) + 1}/{hydra.sweeper.n_trials}"
    label = "cell" if hydra.runtime.choices.get("matrix") else "job"
    num = int(hydra.job.num) + 1
    size = basic_sweep_size(str(hydra.sweep.dir))
    return f"{label} {num}/{size}" if size else f"{label} {num}"


@lru_cache(maxsize=8)
def basic_sweep_size(sweep_dir: str) -> int | None:
    """Jobs in a basic-sweeper multirun: the grid of its sweeper params and command-line sweeps."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    path = Path(sweep_dir) / "multirun.yaml"
    try:
        saved = OmegaConf.load(path)
        params = saved.hydra.sweeper.get("params")  # a matrix file's grid, as BasicSweeper reads it
        arguments = [f"{k}={v}" for k, v in (params or {}).items()] + list(saved.hydra.overrides.task)
        overrides = OverridesParser.create().parse_overrides(arguments)
        return len(BasicSweeper.split_arguments(overrides, None)[0])
    except Exception as exc:  # noqa: BLE001 (glob() sweeps need the config loader; no file: no N, no failure)
        log.debug("sweep size unknown (%s: %s)", path, exc)
        return None
