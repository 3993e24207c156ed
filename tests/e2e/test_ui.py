"""kdexp-ui: the MLflow UI on kdexp's store, on loopback by default."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from kdexp.cli import ui


def test_ui_defaults_to_loopback_and_kdexp_store(capsys, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    ui(["--dry-run"])
    cmd = capsys.readouterr().out.split()
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1"
    assert cmd[cmd.index("--backend-store-uri") + 1] == "sqlite:///outputs/mlflow.db"


def test_ui_follows_tracking_env(capsys, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///elsewhere.db")
    ui(["--dry-run", "--port", "5111"])
    out = capsys.readouterr().out
    assert "sqlite:///elsewhere.db" in out and "--port 5111" in out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.e2e
@pytest.mark.slow
def test_ui_serves_the_store_on_loopback(tmp_path):
    port = _free_port()
    exe = Path(sys.executable).parent / "kdexp-ui"
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    proc = subprocess.Popen([str(exe), "--port", str(port)], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline, status = time.time() + 90, None
        while time.time() < deadline and status is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as resp:
                    status = resp.status
            except OSError:
                assert proc.poll() is None, "kdexp-ui exited early"
                time.sleep(1)
        assert status == 200
        assert (tmp_path / "outputs" / "mlflow.db").is_file()  # it opened kdexp's default store
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(30)
