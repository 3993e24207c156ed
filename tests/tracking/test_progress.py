"""kdexp.tracking.progress: per-epoch lines on a real fit, ETA arithmetic, the run start line, cell/trial numbers."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from kdexp.tracking.progress import (
    EpochProgress,
    eta_seconds,
    format_duration,
    print_run_start,
    run_link,
    sweep_position,
)
from tests.tiny_fit import tiny_module_and_loaders

REPO = Path(__file__).resolve().parents[2]


def tiny_fit(epochs: int, callbacks: list, **trainer_kwargs):
    """A teacher-like stage: DistillModule training a cnn_tiny alone, under a real Trainer."""
    import lightning as L

    module, train, val, logged = tiny_module_and_loaders(epochs)
    trainer = L.Trainer(max_epochs=epochs, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0, callbacks=callbacks,
                        accelerator="cpu", **trainer_kwargs)
    trainer.fit(module, train, val)
    return trainer, logged


LINE = re.compile(r"^teacher cnn_tiny \| epoch (\d+)/(\d+) \| train loss ([\d.]+) \| val acc ([\d.]+) \| "
                  r"([\d.]+)s/epoch \| ETA (\S+)$")


def test_one_line_per_epoch_with_the_epochs_own_loss_and_accuracy(caplog):
    # A fake clock read at each epoch's start and end: the first epoch takes 10 s (warm-up), later ones 2 s.
    ticks = iter([0.0, 10.0, 10.0, 12.0, 12.0, 14.0])
    progress = EpochProgress("teacher cnn_tiny", clock=lambda: next(ticks))
    with caplog.at_level(logging.INFO, logger="kdexp"):
        _, logged = tiny_fit(3, [progress])
    lines = [r.getMessage() for r in caplog.records if r.name == "kdexp" and r.levelno == logging.INFO]
    assert len(lines) == 3, lines
    parsed = [LINE.match(line) for line in lines]
    assert all(parsed), lines
    for i, (match, metrics) in enumerate(zip(parsed, logged)):
        epoch, total, loss, acc = match.groups()[:4]
        assert (int(epoch), int(total)) == (i + 1, 3)
        assert loss == f"{metrics['train/loss']:.4f}" and acc == f"{metrics['val/acc']:.4f}"  # this epoch's
    assert [m.group(5) for m in parsed] == ["10.0", "2.0", "2.0"]
    # ETA: 10 s x 2 epochs left while only the first is timed; then 2 s x 1 (the first's warm-up left out); done
    assert [m.group(6) for m in parsed] == ["20.0s", "2.0s", "0.0s"]
    assert progress.durations == [10.0, 2.0, 2.0]


def test_position_prefix_and_early_stop_note(caplog):
    progress = EpochProgress("student kd", position="cell 2/4")
    with caplog.at_level(logging.INFO, logger="kdexp"):
        tiny_fit(5, [progress], max_steps=8)  # 4 steps an epoch: training stops after epoch 2 of 5
    lines = [r.getMessage() for r in caplog.records if r.name == "kdexp"]
    assert [line.split(" | ")[:2] for line in lines] == [["cell 2/4 student kd", "epoch 1/5"],
                                                        ["cell 2/4 student kd", "epoch 2/5"]]
    assert lines[-1].endswith("ETA 0.0s | stopped early") and "stopped early" not in lines[0]


def test_eta_is_mean_epoch_times_epochs_left():
    assert eta_seconds([1.0], done=1, total=10) == 9.0
    assert eta_seconds([9.0, 3.0, 5.0], done=3, total=10) == 28.0  # the first epoch's one-off costs left out
    assert eta_seconds([5.0], done=1, total=1) == 0.0
    assert eta_seconds([2.0], done=3, total=2) == 0.0  # never negative
    assert eta_seconds([2.0], done=1, total=None) is None and eta_seconds([], done=0, total=5) is None
    assert [format_duration(s) for s in (3.25, 75, 3725, None)] == ["3.2s", "1m15s", "1h02m05s", "?"]


def test_run_start_line_links_the_ui(caplog):
    with caplog.at_level(logging.INFO, logger="kdexp"):
        link = print_run_start("abc123", "7", "sqlite:///outputs/mlflow.db", name="kd:cnn_medium->cnn_tiny",
                               position="cell 3/8")
    assert link == "http://127.0.0.1:5000/#/experiments/7/runs/abc123"
    message = caplog.records[-1].getMessage()
    assert message.startswith("cell 3/8: run kd:cnn_medium->cnn_tiny started: MLflow run abc123, experiment 7: ")
    assert link in message and "kdexp-ui --uri sqlite:///outputs/mlflow.db" in message
    served = "https://mlflow.example.org/prefix"
    assert run_link("r", "1", served + "/") == f"{served}/#/experiments/1/runs/r"
    assert run_link("r", "1", "http://10.0.0.5:5001") == "http://10.0.0.5:5001/#/experiments/1/runs/r"


def test_no_position_outside_a_multirun():
    assert sweep_position({}) is None


APP = """
import hydra
from kdexp.tracking.progress import sweep_position

@hydra.main(config_path="conf", config_name="config", version_base="1.3")
def main(cfg):
    with open("positions.txt", "a") as out:
        out.write(f"{sweep_position(dict(cfg))}\\n")
    return {"score": 0.5}

main()
"""


@pytest.mark.slow
def test_positions_in_real_multiruns(tmp_path):
    """A toy Hydra app run with -m: a command-line grid, a matrix file's params, and a kdexp_optuna study."""
    (tmp_path / "conf" / "matrix").mkdir(parents=True)
    (tmp_path / "app.py").write_text(APP)
    (tmp_path / "conf" / "config.yaml").write_text("defaults:\n  - _self_\n  - matrix: null\nx: 0\ny: a\n"
                                                   "hydra:\n  sweep:\n    dir: multirun\n")
    (tmp_path / "conf" / "matrix" / "small.yaml").write_text("# @package _global_\nhydra:\n  sweeper:\n"
                                                             "    params:\n      x: 1,2,3\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["PYTHONPATH"] = str(REPO)  # kdexp and hydra_plugins/ (the kdexp_optuna sweeper) from this checkout

    def multirun(*args: str) -> list[str]:
        (tmp_path / "positions.txt").unlink(missing_ok=True)
        done = subprocess.run([sys.executable, "app.py", "-m", *args], check=False, cwd=tmp_path,
                              capture_output=True, text=True, timeout=300, env=env)
        assert done.returncode == 0, done.stderr[-3000:]
        return (tmp_path / "positions.txt").read_text().splitlines()

    assert multirun("x=1,2", "y=a,b,c") == [f"job {i}/6" for i in range(1, 7)]
    assert multirun("matrix=small", "y=a,b") == [f"cell {i}/6" for i in range(1, 7)]
    optuna = ["hydra/sweeper=kdexp_optuna", "hydra.sweeper.n_trials=3", "hydra.sweeper.mlflow=false",
              f"hydra.sweeper.storage=sqlite:///{tmp_path / 'optuna.db'}", "hydra.sweeper.study_name=positions",
              "hydra.sweeper.objectives=[{metric:score,direction:maximize}]", "x=range(0,10)"]  # a named study resumes
    assert multirun(*optuna) == ["trial 1/3", "trial 2/3", "trial 3/3"]
    assert multirun(*optuna[:1], "hydra.sweeper.n_trials=5", *optuna[2:]) == ["trial 4/5", "trial 5/5"]  # resumed


def test_kdexp_train_shows_kdexp_info_lines():
    """kdexp-train's Hydra logging: the root logger at INFO on stdout, nothing raising the `kdexp` logger."""
    from hydra import compose, initialize_config_dir

    from kdexp.config.store import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(config_name="train", return_hydra_config=True)
    logging_conf = cfg.hydra.job_logging
    assert logging_conf.root.level == "INFO" and "console" in logging_conf.root.handlers
    assert logging_conf.handlers.console.stream == "ext://sys.stdout"
    assert "kdexp" not in (logging_conf.get("loggers") or {})
