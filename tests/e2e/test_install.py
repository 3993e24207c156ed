"""A real install: the wheel built from this repository, installed in a fresh virtual environment, runs
`kdexp-train` from an unrelated folder (its configs ship inside the package) and answers `--help`."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]


def sh(*cmd, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    done = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    return done


def test_the_wheel_installed_in_a_fresh_venv_runs_from_anywhere(tmp_path):
    source = tmp_path / "source"  # a copy: building in the checkout would leave build/ there
    shutil.copytree(REPO, source, symlinks=True, ignore=shutil.ignore_patterns(
        ".git", ".venv", "outputs", "multirun", "build", "*.egg-info", "__pycache__", ".pytest_cache"))
    sh(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", tmp_path / "dist",
       source, cwd=tmp_path)
    (wheel,) = (tmp_path / "dist").glob("kdexp-*.whl")
    fresh = tmp_path / "fresh"
    sh(sys.executable, "-m", "venv", "--without-pip", fresh, cwd=tmp_path)
    # The dependencies (torch, lightning, ...) come from this environment's site-packages, added as a plain
    # path: its editable install of the repository is a .pth hook that a path entry does not run.
    site = Path(subprocess.run([fresh / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_paths()"
                                "['purelib'])"], capture_output=True, text=True, check=True).stdout.strip())
    (site / "kdexp_test_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    sh(fresh / "bin" / "python", "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--ignore-installed", wheel,
       cwd=tmp_path)

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MLFLOW_TRACKING_URI")}
    env["KDEXP_OFFLINE"] = "1"
    where = sh(fresh / "bin" / "python", "-c", "import kdexp; print(kdexp.__file__)", cwd=elsewhere, env=env)
    assert str(fresh) in where.stdout and str(REPO) not in where.stdout  # the installed copy, not the repo

    helped = sh(fresh / "bin" / "kdexp-train", "--help", cwd=elsewhere, env=env)
    assert helped.stdout.startswith("kdexp-train: ") and "powered by Hydra" not in helped.stdout
    assert "distill: ab, at, cc" in helped.stdout and "recipe:" in helped.stdout and "Examples:" in helped.stdout

    run = sh(fresh / "bin" / "kdexp-train", "trainer.max_epochs=1", "eval.latency_repeats=2", cwd=elsewhere, env=env)
    assert "| student cnn_tiny (kd) |" in run.stdout
    assert (elsewhere / "outputs" / "mlflow.db").is_file()
