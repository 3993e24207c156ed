"""Console entry points: `kdexp-train` (a Hydra app) and `kdexp-ui` (the MLflow UI on kdexp's store)."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from kdexp.config.store import register_configs
from kdexp.tracking.locate import add_store_arguments, hydra_style, parsed_uri

log = logging.getLogger("kdexp")
_STATE = {"composed": False}  # set once Hydra hands a composed config to the job


def _mark_composed() -> None:
    # A function, not a threading.Event read by _train: submitit pickles _train by value with the globals it
    # names, and a lock does not pickle.
    _STATE["composed"] = True
CONF_DIR = str(Path(__file__).resolve().parent / "conf")  # shipped in the package (a link to conf/ in the repo)


@hydra.main(config_path=CONF_DIR, config_name="train", version_base="1.3")
def _train(cfg: DictConfig) -> dict[str, float]:
    _mark_composed()
    from kdexp.config.errors import ConfigError, MatrixError
    from kdexp.variants import run_experiment

    try:
        return run_experiment(cfg, HydraConfig.get().runtime.output_dir)
    except (ConfigError, FileNotFoundError, ValueError) as exc:
        if HydraConfig.get().mode == RunMode.MULTIRUN and not isinstance(exc, MatrixError):
            raise  # a sweep records the trial as failed and goes on
        log_to_files(str(exc))  # the run folder's log keeps it; the console gets one line
        print(f"kdexp-train: error: {exc}", file=sys.stderr)
        sys.exit(2)


def log_to_files(message: str) -> None:
    """An ERROR record for the log files only (Hydra's job log), not for the console's handlers."""
    record = log.makeRecord(log.name, logging.ERROR, __file__, 0, message, None, None)
    for handler in logging.getLogger().handlers + log.handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


def train() -> None:
    from kdexp.config.plugins import load_plugins, requested_imports

    try:
        load_plugins(requested_imports(sys.argv[1:]))  # before the zoo's names become config choices
    except ValueError as exc:
        print(f"kdexp-train: error: {exc}", file=sys.stderr)
        sys.exit(2)
    register_configs()
    try:
        with one_line_compose_errors():
            _train()
    except SystemExit as exc:  # what Hydra still reports itself (several lines) and exits 1 for
        if exc.code == 1 and not _STATE["composed"]:
            sys.exit(2)  # bad input, like every other config error
        raise


@contextlib.contextmanager
def one_line_compose_errors() -> Iterator[None]:
    """Hydra's composition errors (an unknown group option, a bad override, a wrong type), in the command line
    or in a YAML file (a sweep's `hydra/sweeper/sampler`), as one line and exit 2 instead of Hydra's several
    lines and exit 1. Hydra prints them in hydra._internal.utils.run_and_report, with no public hook: that
    function is wrapped while the app runs, and errors raised once a job has its config pass on unchanged."""
    import hydra._internal.utils as hydra_utils

    from kdexp.config.compose_errors import compose_error_line

    report = hydra_utils.run_and_report

    def one_line(func: Callable[[], Any]) -> Any:
        try:
            return func()
        except Exception as exc:
            line = None if _STATE["composed"] else compose_error_line(exc)
            if line is None:
                raise
            print(f"kdexp-train: error: {line}", file=sys.stderr)
            sys.exit(2)

    hydra_utils.run_and_report = lambda func: report(lambda: one_line(func))
    try:
        yield
    finally:
        hydra_utils.run_and_report = report


def ui_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kdexp-ui", description="Open the MLflow UI on kdexp's tracking store.")
    add_store_arguments(parser)
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default: loopback only)")
    parser.add_argument("--port", type=int, default=5000)
    parser.add_argument("--dry-run", action="store_true", help="print the command instead of running it")
    return parser


def ui(argv: list[str] | None = None) -> None:
    args = ui_parser().parse_args(hydra_style(sys.argv[1:] if argv is None else argv))
    from kdexp.tracking.stores import normalize_uri  # postgresql:// -> the psycopg 3 driver MLflow can load

    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", normalize_uri(parsed_uri(args)), "--host",
           args.host, "--port", str(args.port)]
    if args.dry_run:
        print(" ".join(cmd))
        return
    os.execv(sys.executable, cmd)
