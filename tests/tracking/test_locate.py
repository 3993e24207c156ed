"""The command-line tools read the store kdexp-train wrote: --uri, else $MLFLOW_TRACKING_URI, else paths.root."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from kdexp.tracking.locate import hydra_style, store_uri


def test_store_uri_precedence(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert store_uri() == "sqlite:///outputs/mlflow.db"
    assert store_uri(root="/tmp/exp/") == "sqlite:////tmp/exp/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///env.db")
    assert store_uri(root="/tmp/exp") == "sqlite:///env.db"  # as in conf/train.yaml: the environment wins
    assert store_uri("postgresql://h/db", root="/tmp/exp") == "postgresql://h/db"


def test_paths_root_as_typed_for_kdexp_train():
    assert hydra_style(["abc", "paths.root=/x/y", "--format", "onnx"]) == ["abc", "--root", "/x/y", "--format", "onnx"]


@pytest.mark.parametrize("tool", ["kdexp-ui", "kdexp-export", "kdexp-report"])
def test_tools_find_the_store_of_paths_root(tool, tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    exe = str(Path(sys.executable).parent / tool)
    if tool == "kdexp-ui":
        out = subprocess.run([exe, "--dry-run", f"paths.root={tmp_path}"], capture_output=True, text=True, check=True)
        assert f"--backend-store-uri sqlite:///{tmp_path}/mlflow.db" in out.stdout
    elif tool == "kdexp-export":  # no store there: the error names the file it looked for, not outputs/mlflow.db
        out = subprocess.run([exe, "0123", "--format", "onnx", f"paths.root={tmp_path}"], capture_output=True,
                             text=True)
        assert out.returncode == 1 and f"no MLflow store at {tmp_path}/mlflow.db" in out.stderr
    else:
        out = subprocess.run([exe, "--no-plots", f"paths.root={tmp_path}"], capture_output=True, text=True)
        assert out.returncode == 2 and f"no tracking store at {tmp_path}/mlflow.db" in out.stderr
