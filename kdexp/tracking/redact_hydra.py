"""A Hydra callback that keeps passwords out of Hydra's own files and logs (registered in conf/train.yaml).

Hydra writes a job's ``.hydra/{config,hydra,overrides}.yaml`` before the task starts, and a sweep's
``multirun.yaml`` and its launchers log every job's override list ("#0 : tracking.uri=postgresql://u:pw@...").
The callback masks log records for the whole process and rewrites those files, and the job's own text
outputs once it ends, through kdexp.tracking.redact. A password in an environment variable (PGPASSWORD, ~/.pgpass,
or ``${oc.env:...}`` in a URI) is never copied into them in the first place; that is the way for clusters,
where submitit also pickles each job's config (README: "On GPUs and clusters").
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from kdexp.tracking.redact import install_log_redaction, redact_text

log = logging.getLogger(__name__)
TEXT_SUFFIXES = (".yaml", ".yml", ".json", ".md", ".txt", ".log", ".csv", ".tex")
MAX_TEXT_BYTES = 20_000_000


def redact_file(path: Path) -> bool:
    """Rewrite a text file with its secrets masked (atomically); True if it changed."""
    try:
        if not path.is_file() or path.stat().st_size > MAX_TEXT_BYTES:
            return False
        text = path.read_text()
    except (OSError, UnicodeDecodeError):
        return False
    masked = redact_text(text)
    if masked == text:
        return False
    tmp = path.with_name(f".{path.name}.redacting")
    tmp.write_text(masked)
    tmp.replace(path)
    return True


def redact_folder(folder: Path, recursive: bool = False) -> int:
    """Mask secrets in the text files of a folder (its .hydra/ too); how many files changed."""
    if not folder.is_dir():
        return 0
    files = folder.rglob("*") if recursive else [*folder.iterdir(), *(folder / ".hydra").glob("*")]
    return sum(redact_file(p) for p in files if p.suffix in TEXT_SUFFIXES)


def _remember(config: DictConfig) -> None:
    """Register the passwords in the composed config (overrides, sweeper storage, tracking URI) unresolved:
    an interpolation is left as it is and resolved values are masked when they show up."""
    redact_text(OmegaConf.to_yaml(config, resolve=False))


def _select(config: DictConfig, key: str) -> Any:
    return OmegaConf.select(config, key, default=None, throw_on_missing=False)


class RedactSecrets(Callback):
    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        install_log_redaction()
        _remember(config)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        install_log_redaction()
        _remember(config)

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        # Also in a job process of its own (joblib, submitit), where no run/multirun callback ran.
        install_log_redaction()
        _remember(config)
        self._redact_job_files(config)

    def on_job_end(self, config: DictConfig, job_return: Any = None, **kwargs: Any) -> None:
        self._redact_job_files(config)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = _select(config, "hydra.sweep.dir")
        if sweep_dir:
            redact_file(Path(sweep_dir) / "multirun.yaml")

    @staticmethod
    def _redact_job_files(config: DictConfig) -> None:
        try:
            output_dir = _select(config, "hydra.runtime.output_dir")
            if output_dir:
                redact_folder(Path(output_dir))
            if _select(config, "hydra.mode") == RunMode.MULTIRUN:  # written before the first job starts
                redact_file(Path(_select(config, "hydra.sweep.dir")) / "multirun.yaml")
        except Exception as exc:  # noqa: BLE001 - masking must never stop a job; say so and go on
            log.warning("could not mask secrets in the job's files: %s", redact_text(str(exc)))
