"""Shared fixtures: in-process config composition and an isolated output folder."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from kdexp.config.store import register_configs

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


DISTRIBUTED_ENV = ("WORLD_SIZE", "LOCAL_RANK", "NODE_RANK", "RANK", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture(autouse=True)
def _isolated_globals():
    """What one test's in-process Lightning fit may leave behind (deterministic kernels, the DDP launcher's
    environment) must not change the next test."""
    import os

    import torch

    deterministic, env = torch.are_deterministic_algorithms_enabled(), {k: os.environ.get(k) for k in DISTRIBUTED_ENV}
    yield
    torch.use_deterministic_algorithms(deterministic)
    for key, value in env.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    """Tests never touch the network and never see the user's tracking server."""
    monkeypatch.setenv("KDEXP_OFFLINE", "1")
    monkeypatch.setenv("KDEXP_SYSTEM_METRICS", "false")  # tracking.system_metrics: sampler threads off in tests
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def compose_train(overrides: list[str] | None = None) -> DictConfig:
    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="train", overrides=overrides or [], return_hydra_config=False)


def exit_codes_of_concurrent(target, args: tuple, n: int = 2, timeout: float = 120) -> list:
    """Start `n` spawned processes running target(*args) at once; their exit codes (cache-locking tests)."""
    import multiprocessing as mp

    procs = [mp.get_context("spawn").Process(target=target, args=args) for _ in range(n)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout)
    return [p.exitcode for p in procs]


@pytest.fixture
def tiny_overrides(tmp_path) -> list[str]:
    """A whole experiment in seconds: synthetic data, tiny models, one epoch, output under tmp_path."""
    return [
        "data=synthetic", "teacher=cnn_small", "student=cnn_tiny", "trainer.max_epochs=1",
        f"paths.root={tmp_path / 'outputs'}", "eval.latency_repeats=2", "eval.latency_batch=8",
    ]
