"""The README's plug-in example end to end: a user's model, method and data set in their own file and config
folder (docs/plugin_example), used by the real `kdexp-train` from that folder, without editing kdexp."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "plugin_example"


def test_a_users_model_method_and_data_set_train_from_the_cli(tmp_path):
    work = tmp_path / "project"
    shutil.copytree(EXAMPLE, work)
    env = {**os.environ, "KDEXP_OFFLINE": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    args = ["imports=[my_plugin]", "hydra.searchpath=[file://conf]", "data=my_blobs", "student=my_net",
            "teacher=cnn_small", "distill=my_l2", "+student.kwargs.width=16", "trainer.max_epochs=1",
            "eval.latency_repeats=2", "eval.latency_batch=8"]
    done = subprocess.run([str(Path(sys.executable).parent / "kdexp-train"), *args], cwd=work, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "| student my_net (my_l2) |" in done.stdout

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{work / 'outputs' / 'mlflow.db'}")
    (student,) = client.search_runs([client.get_experiment_by_name("kdexp").experiment_id],
                                    "tags.`kdexp.role` = 'student'")
    assert (student.data.tags["student"], student.data.tags["distill"], student.data.tags["data"]) == (
        "my_net", "my_l2", "my_blobs")
    history = client.get_metric_history(student.info.run_id, "train/my_l2")  # the plug-in's own loss term
    assert len(history) == 1 and history[0].value > 0


def test_an_unimportable_plug_in_is_one_clear_line(tmp_path):
    done = subprocess.run([str(Path(sys.executable).parent / "kdexp-train"), "imports=[no_such_plugin]"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "imports: cannot import plug-in 'no_such_plugin'" in done.stderr and "Traceback" not in done.stderr
