"""The real `kdexp-train` CLI on tiny data: pipeline, teacher cache, MLflow contents, bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
TINY = ["data=synthetic", "data.num_samples=300", "data.num_test=100", "data.image_size=8",
        "teacher=cnn_small", "student=cnn_tiny", "trainer.max_epochs=2",
        "eval.latency_repeats=2", "eval.latency_batch=8"]


def kdexp_train(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "KDEXP_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    exe = Path(sys.executable).parent / "kdexp-train"
    return subprocess.run([str(exe), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def runs(root: Path):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'outputs' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("kdexp")
    return client, client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"])


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """The same teacher needed twice: the second run (another seed for the student) must reuse it."""
    cwd = tmp_path_factory.mktemp("cli")
    first = kdexp_train(*TINY, cwd=cwd)
    assert first.returncode == 0, first.stderr[-3000:]
    second = kdexp_train(*TINY, "distill.temperature=2", "baseline=false", cwd=cwd)
    assert second.returncode == 0, second.stderr[-3000:]
    return cwd, first, second


def test_outputs_default_to_cwd_outputs(two_runs):
    cwd, first, _ = two_runs
    assert (cwd / "outputs" / "mlflow.db").is_file()
    assert len(list((cwd / "outputs" / "cache" / "models").glob("*/model.pt"))) == 2  # teacher + baseline
    assert not (cwd / "mlruns").exists()  # artifacts live under outputs/, not in the working dir


def test_summary_table_is_printed(two_runs):
    _, first, _ = two_runs
    out = first.stdout
    for row in ("| teacher cnn_small", "| student cnn_tiny (vanilla)", "| student cnn_tiny (kd)"):
        assert row in out
    for column in ("test top-1", "agree w/ T", "params", "FLOPs", "lat b1 ms", "size"):
        assert column in out
    assert "latency: median (IQR) of 2 interleaved blocks, every model above in the same blocks" in out


def test_teacher_trained_once_then_reused(two_runs):
    cwd, first, second = two_runs
    client, all_runs = runs(cwd)
    roles = [r.data.tags["kdexp.role"] for r in all_runs]
    assert roles.count("teacher") == 1 and roles.count("baseline") == 1 and roles.count("student") == 2
    teacher = next(r for r in all_runs if r.data.tags["kdexp.role"] == "teacher")
    students = [r for r in all_runs if r.data.tags["kdexp.role"] == "student"]
    assert all(s.data.tags["kdexp.teacher_run_id"] == teacher.info.run_id for s in students)
    assert "training teacher" in first.stderr + first.stdout
    assert "reusing cached teacher" in second.stderr + second.stdout
    assert "training teacher" not in second.stderr + second.stdout


def test_mlflow_run_has_params_tags_metrics_and_artifacts(two_runs):
    cwd, _, _ = two_runs
    client, all_runs = runs(cwd)
    student = next(r for r in all_runs if r.data.tags["kdexp.role"] == "student")
    assert student.info.status == "FINISHED"
    params, tags, metrics = student.data.params, student.data.tags, student.data.metrics
    assert params["distill.temperature"] == "4.0" and params["data.name"] == "synthetic"
    assert params["student.arch"] == "cnn_tiny" and json.loads(params["data.val_fraction"]) == 0.2
    assert {k: tags[k] for k in ("data", "teacher", "student", "distill", "seed")} == {
        "data": "synthetic", "teacher": "cnn_small", "student": "cnn_tiny", "distill": "kd", "seed": "0"}
    assert tags["kdexp.version"] and tags["kdexp.baseline_run_id"]
    history = client.get_metric_history(student.info.run_id, "train/loss")
    assert [m.step for m in history] == [0, 1]
    for key in ("student/test_top1", "teacher/test_top1", "baseline/test_top1", "student/agreement",
                "student/kl_teacher", "student/test_ece", "student/params", "student/flops",
                "student/latency_b1_ms", "student/size_bytes", "student/params_ratio", "student/best_val_acc"):
        assert key in metrics, key
    assert 0 <= metrics["student/test_top1"] <= 1 and metrics["student/params_ratio"] < 1
    # latency: teacher, baseline and student timed in the same blocks of this run, with spread and flags
    for role in ("teacher", "baseline", "student"):
        assert metrics[f"{role}/latency_b8_ms"] > 0 and metrics[f"{role}/latency_b8_iqr_ms"] >= 0
        assert metrics[f"{role}/latency_noisy"] in (0.0, 1.0)
    assert metrics["student/latency_b1_ms_ratio"] > 0 and metrics["student/latency_b1_ratio_iqr"] >= 0
    assert metrics["student/latency_slower_than_teacher"] in (0.0, 1.0) and metrics["latency/blocks"] == 2
    assert student.data.tags["kdexp.latency_threads"] == str(int(metrics["latency/threads"]))
    assert student.data.tags["kdexp.latency_flags"]
    artifacts = {a.path for a in client.list_artifacts(student.info.run_id)}
    assert {"config.yaml", "metrics.json", "summary.md", "student.pt"} <= artifacts


def test_every_run_records_its_data_set_and_model_and_the_student_ships(two_runs):
    cwd, first, _ = two_runs
    client, all_runs = runs(cwd)
    for run in all_runs:  # the UI's Dataset and Models columns
        (inp,) = run.inputs.dataset_inputs
        assert inp.dataset.name == "synthetic" and len(inp.dataset.digest) == 16
        models = client.search_logged_models([run.info.experiment_id],
                                             filter_string=f"source_run_id = '{run.info.run_id}'")
        assert len(models) == 1 and models[0].tags["kdexp.role"] == run.data.tags["kdexp.role"]
    student = next(r for r in all_runs if r.data.tags["kdexp.role"] == "student")
    m = student.data.metrics
    assert m["student/onnx_max_abs_diff"] <= 1e-4 and m["student/onnx_latency_b1_ms"] > 0
    exports = {a.path for a in client.list_artifacts(student.info.run_id, "exports")}
    assert {"exports/student.onnx", "exports/student.pt2"} <= exports
    assert "student in ONNX Runtime: lat b1" in first.stdout
    assert "started: MLflow run" in first.stdout + first.stderr  # each run announces its id and UI link


def test_teacher_checkpoint_loads_and_mismatch_fails(two_runs, tmp_path):
    cwd, _, _ = two_runs
    weights = next((cwd / "outputs" / "cache" / "models").glob("*/model.pt"))
    meta = json.loads((weights.parent / "meta.json").read_text())
    arch = meta["spec"]["arch"]
    other = "cnn_tiny" if arch == "cnn_small" else "cnn_small"
    bad = kdexp_train(*TINY, f"teacher={other}", f"teacher.ckpt={weights}", "baseline=false", cwd=tmp_path)
    assert bad.returncode == 2
    assert "teacher.ckpt" in bad.stderr and "does not fit" in bad.stderr


@pytest.mark.parametrize("override, message", [
    ("distill.temperature=-1", "distill.temperature=-1.0 is invalid: must be a number > 0"),
    ("distill.weights.kd=-0.5", "distill.weights.kd=-0.5 is invalid"),
    ("data=fashion_mnist", "could not find the 'fashion_mnist' data set"),
])
def test_bad_input_fails_before_training_with_a_clear_message(tmp_path, override, message):
    if override.startswith("data="):  # an explicit root without the files: no fallback, one clear error
        args = [override, f"data.root={tmp_path / 'empty'}", "teacher=cnn_small", "student=cnn_tiny"]
    else:
        args = [*TINY, override]
    result = kdexp_train(*args, cwd=tmp_path)
    assert result.returncode == 2
    assert message in result.stderr
    assert not (tmp_path / "outputs" / "cache").exists()  # nothing trained, nothing half-written


def test_crash_is_recorded_as_failed_run(tmp_path):
    result = kdexp_train(*TINY, "+trainer.gradient_clip_algorithm=sideways", cwd=tmp_path)
    assert result.returncode != 0
    client, all_runs = runs(tmp_path)
    failed = [r for r in all_runs if r.info.status == "FAILED"]
    assert failed and "sideways" in failed[0].data.tags["kdexp.error"]
    assert not list((tmp_path / "outputs" / "cache" / "models").glob("*/model.pt"))


def test_help_and_cfg_job(tmp_path):
    helped = kdexp_train("--help", cwd=tmp_path)
    assert helped.returncode == 0 and "teacher: " in helped.stdout and "distill: " in helped.stdout
    job = kdexp_train("--cfg", "job", "distill.temperature=7", cwd=tmp_path)
    assert job.returncode == 0 and "temperature: 7" in job.stdout
    assert not (tmp_path / "outputs").exists()


def test_two_processes_started_together_get_their_own_folders(tmp_path):
    """Two matrix processes started at once (`cmd1 & cmd2`) wrote each other's job folders (student.pt, ONNX)
    when the folder name was the start second: it now runs to the microsecond."""
    exe = Path(sys.executable).parent / "kdexp-train"
    env = {**os.environ, "KDEXP_OFFLINE": "1"}
    procs = [subprocess.Popen([str(exe), "--cfg", "all", "--resolve"], cwd=tmp_path, env=env,
                              stdout=subprocess.PIPE, text=True) for _ in range(2)]
    dirs = []
    for proc in procs:
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0
        lines = out.splitlines()
        dirs.append({lines[i - 1].strip(): line.split("dir: ")[1] for i, line in enumerate(lines)
                     if line.strip().startswith("dir: ") and lines[i - 1].strip() in ("run:", "sweep:")})
    assert set(dirs[0]) == {"run:", "sweep:"}
    assert dirs[0]["run:"] != dirs[1]["run:"] and dirs[0]["sweep:"] != dirs[1]["sweep:"]
