"""The real `kdexp-train` CLI on text: a saved BERT teacher + KD student on local CSV files, a transformer pair with
TinyBERT's losses, and bad text input (one line, exit 2)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.e2e.test_cli import kdexp_train, runs
from tests.text_helpers import tiny_bert_folder, write_files

pytest.importorskip("transformers", reason="the text extra (pip install kdexp[text])")

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
QUICK = ["trainer.max_epochs=1", "eval.latency_repeats=2", "eval.latency_batch=8", "data.max_length=24"]


@pytest.fixture(scope="module")
def csv_run(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("text_cli")
    files = write_files(cwd / "data")
    folder = tiny_bert_folder(cwd / "bert")
    out = kdexp_train("data=text", f"data.files.train={files['train']}", f"data.files.test={files['test']}",
                      "teacher=hf", f"teacher.arch=hf:{folder}", "student=text_cnn", "distill=kd", *QUICK, cwd=cwd)
    return cwd, out, files


def test_teacher_and_kd_student_on_csv_files(csv_run):
    cwd, out, _ = csv_run
    assert out.returncode == 0, out.stderr[-3000:]
    log = out.stdout + out.stderr
    assert "| student text_cnn (kd)" in out.stdout and "| teacher hf:" in out.stdout
    assert "filled teacher outputs ('logits',)" in log  # logit methods use the teacher-output cache
    client, all_runs = runs(cwd)
    roles = sorted(r.data.tags["kdexp.role"] for r in all_runs)
    assert roles == ["baseline", "student", "teacher"]
    student = next(r for r in all_runs if r.data.tags["kdexp.role"] == "student")
    assert student.info.status == "FINISHED"
    assert student.data.metrics["student/onnx_parity_ok"] == 1.0
    assert student.data.metrics["student/onnx_latency_b1_ms"] > 0 and student.data.metrics["student/latency_b1_ms"] > 0
    dataset = client.get_run(student.info.run_id).inputs.dataset_inputs[0].dataset
    features = json.loads(json.loads(dataset.schema)["mlflow_tensorspec"]["features"])[0]["tensor-spec"]
    assert dataset.name == "text" and features == {"dtype": "int64", "shape": [-1, 3, 24]}
    assert json.loads(dataset.profile)["num_classes"] == 2
    assert student.data.tags["kdexp.data.train_rows"] == "180"


def test_a_transformer_pair_trains_with_tinybert_in_its_two_stages(tmp_path):
    """TinyBERT's intermediate-layer stage (hidden + attention), then its prediction-layer stage (kd): in that order,
    each with its own terms, and both counted in the student's optimizer steps."""
    out = kdexp_train("data=text_synthetic", "data.num_samples=200", "data.num_test=60", "teacher=hf", "student=hf",
                      "student.hf_config.num_hidden_layers=1", "distill=tinybert", "distill.init_epochs=2",
                      "baseline=false", "tracking.export_student=false", "tracking.log_model=false", *QUICK,
                      cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "teacher runs online: the cache keeps no keys, queries" in out.stdout + out.stderr  # scores: online
    client, all_runs = runs(tmp_path)
    student = next(r for r in all_runs if r.data.tags["kdexp.role"] == "student")
    metrics = student.data.metrics
    history = {k: client.get_metric_history(student.info.run_id, k) for k in ("init/train/loss", "train/loss")}
    first, second = history["init/train/loss"], history["train/loss"]
    assert len(first) == 2 and len(second) == 1 and max(m.timestamp for m in first) <= second[0].timestamp
    # stage 1: its loss is hidden + attention, unweighted; stage 2: the soft targets alone (weights kd 1, the rest 0)
    assert metrics["init/train/loss"] == pytest.approx(metrics["init/train/hidden"] + metrics["init/train/attention"],
                                                       rel=1e-4)
    assert "init/train/kd" not in metrics and metrics["init/train/attention"] > 0
    assert metrics["train/loss"] == pytest.approx(metrics["train/kd"], rel=1e-4) and metrics["train/hidden"] > 0
    batches = 6  # 200 samples, 10 % held out for validation: 180, batch 32
    assert metrics["student/optimizer_steps"] == 3 * batches and 0 <= metrics["student/test_top1"] <= 1


def test_bad_text_input_is_one_line_and_exit_2(csv_run):
    cwd, _, files = csv_run
    common = ["data=text", f"data.files.train={files['train']}", f"data.files.test={files['test']}", *QUICK]
    missing = kdexp_train(*common, "data.text_field=sentence", "teacher=hf", "student=text_cnn", cwd=cwd)
    assert missing.returncode == 2
    assert "kdexp-train: error: data.text_field='sentence' is not a column of the train split; its columns: text, " \
           "label" in missing.stderr
    hub = kdexp_train(*common, "teacher=hf", "teacher.arch=hf:no-such-org/bert", "student=text_cnn", cwd=cwd)
    assert hub.returncode == 2 and "pass a local folder saved with save_pretrained" in hub.stderr
    image = kdexp_train(*common, "teacher=hf", "student=cnn_tiny", cwd=cwd)
    assert image.returncode == 2 and "student.arch='cnn_tiny' does not take text" in image.stderr
    assert len(runs(cwd)[1]) == 3  # nothing recorded beyond the first run's three


def kdexp_export(*args: str, cwd) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).parent / "kdexp-export"
    return subprocess.run([str(exe), *args], cwd=cwd, capture_output=True, text=True, timeout=600)


def ort_logits(path: Path, x) -> np.ndarray:
    from kdexp.shipping.export import onnx_predict, onnx_session

    return onnx_predict(onnx_session(path), x)


def test_kdexp_export_of_a_text_student_with_and_without_its_logged_model(csv_run, tmp_path):
    """The real kdexp-export: the CSV run's student from its MLflow Model, and a BERT student of a run with
    tracking.log_model=false rebuilt from student.pt and config.yaml (its vocabulary from its data, read again), and
    that run's teacher from teacher.pt and its tokenizer/ artifact. ONNX Runtime on the real test split gives
    torch's logits (the run's own student.pt2), the runs' accuracies and the student's KL to its teacher."""
    import torch

    from kdexp.data import create_datamodule

    cwd, _, files = csv_run
    client, all_runs = runs(cwd)
    logged = next(r for r in all_runs if r.data.tags["kdexp.role"] == "student")
    out = kdexp_export(logged.info.run_id, "--format", "onnx", "--out", str(tmp_path / "cnn.onnx"), cwd=cwd)
    assert out.returncode == 0, out.stderr[-2000:]
    dm = create_datamodule("text", files={"train": files["train"], "test": files["test"]}, max_length=24,
                           tokenizer=f"hf:{cwd / 'bert'}")
    dm.setup()
    x, y = dm.split_tensors("test")
    got = ort_logits(tmp_path / "cnn.onnx", x)
    assert (got.argmax(1) == y.numpy()).mean() == pytest.approx(logged.data.metrics["student/test_top1"], abs=1e-6)

    rebuilt_dir = tmp_path / "rebuilt"
    rebuilt_dir.mkdir()
    run = kdexp_train("data=text_synthetic", "data.num_samples=120", "data.num_test=40", "teacher=hf", "student=hf",
                      "student.hf_config.num_hidden_layers=1", "student.hf_config.hidden_size=32", "distill=kd",
                      "baseline=false", "tracking.log_model=false", *QUICK, cwd=rebuilt_dir)
    assert run.returncode == 0, run.stderr[-3000:]
    client, all_runs = runs(rebuilt_dir)
    student = next(r for r in all_runs if r.data.tags["kdexp.role"] == "student")
    assert not student.outputs.model_outputs  # no MLflow Model: kdexp-export rebuilds it from its weights
    out = kdexp_export(student.info.run_id, "--format", "onnx", "--out", str(tmp_path / "bert.onnx"),
                       cwd=rebuilt_dir)
    assert out.returncode == 0, out.stderr[-2000:]
    dm = create_datamodule("text_synthetic", num_samples=120, num_test=40, max_length=24, tokenizer="hf")
    dm.setup()
    x, y = dm.split_tensors("test")
    got = ort_logits(tmp_path / "bert.onnx", x)
    archive = client.download_artifacts(student.info.run_id, "exports/student.pt2", str(tmp_path))
    with torch.no_grad():
        expected = torch.export.load(archive).module()(x).numpy()
    diff = float(np.abs(got - expected).max())
    print(f"max |ONNX Runtime - torch| logit of the rebuilt text student on {len(x)} test rows: {diff:.2e}")
    assert diff < 1e-4
    assert (got.argmax(1) == y.numpy()).mean() == pytest.approx(student.data.metrics["student/test_top1"], abs=1e-6)

    # the teacher of that run, without an MLflow Model either: rebuilt from teacher.pt, its params and its
    # tokenizer/ artifact, which tokenizes the test texts into the run's own ids
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
    from transformers import AutoTokenizer

    from kdexp.measure.metrics import agreement_metrics

    teacher = next(r for r in all_runs if r.data.tags["kdexp.role"] == "teacher")
    assert not teacher.outputs.model_outputs
    tokenizer = AutoTokenizer.from_pretrained(client.download_artifacts(teacher.info.run_id, "tokenizer",
                                                                        str(tmp_path / "tok")))
    texts = [str(t) for t in dm.read_splits()["test"]["text"]]
    assert tokenizer(texts, truncation=True, max_length=24, padding="max_length")["input_ids"] == x[:, 0].tolist()
    out = kdexp_export(teacher.info.run_id, "--format", "onnx", "--out", str(tmp_path / "teacher.onnx"),
                       cwd=rebuilt_dir)
    assert out.returncode == 0, out.stderr[-2000:]
    teacher_logits = torch.from_numpy(ort_logits(tmp_path / "teacher.onnx", x))
    assert (teacher_logits.argmax(1) == y).float().mean().item() == pytest.approx(
        student.data.metrics["teacher/test_top1"], abs=1e-6)
    # the student run's KL(teacher || student) on the test split, from the exported teacher's logits
    agree = agreement_metrics(torch.from_numpy(expected), teacher_logits)
    assert agree["kl_teacher"] == pytest.approx(student.data.metrics["student/kl_teacher"], rel=1e-4, abs=1e-6)
    assert agree["agreement"] == pytest.approx(student.data.metrics["student/agreement"], abs=1e-6)

    # a run from before the tokenizer was recorded is still refused, with one line
    get_artifact_repository(teacher.info.artifact_uri).delete_artifacts("tokenizer")
    refused = kdexp_export(teacher.info.run_id, "--format", "onnx", cwd=rebuilt_dir)
    assert refused.returncode == 1 and len(refused.stderr.strip().splitlines()) == 1
    assert "is a text teacher run without an MLflow Model: its vocabulary is not recorded" in refused.stderr


def test_two_ddp_processes_distil_on_text(tmp_path):
    """kdexp-train on 2 CPU processes (gloo) with text data: the run finishes, each model recorded once, the
    student's epochs logged once, with the per-token teacher features of tinybert (attention=probs) cached; both
    of its stages run under DDP (the first leaves the classifier out of its loss: unused parameters)."""
    out = kdexp_train("data=text_synthetic", "data.num_samples=120", "data.num_test=40", "teacher=hf", "student=hf",
                      "student.hf_config.num_hidden_layers=1", "distill=tinybert", "distill.attention=probs",
                      "distill.init_epochs=1", "baseline=false",
                      "trainer.accelerator=cpu", "trainer.devices=2", "+trainer.strategy=ddp", "teacher.max_epochs=1",
                      "tracking.export_student=false", "tracking.log_model=false", *QUICK, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    client, all_runs = runs(tmp_path)
    assert sorted(r.data.tags["kdexp.role"] for r in all_runs) == ["student", "teacher"]
    assert {r.info.status for r in all_runs} == {"FINISHED"}
    student = next(r for r in all_runs if r.data.tags["kdexp.role"] == "student")
    assert [m.step for m in client.get_metric_history(student.info.run_id, "train/loss")] == [0]
    assert [m.step for m in client.get_metric_history(student.info.run_id, "init/train/loss")] == [0]
    assert student.data.metrics["init/train/attention"] > 0 and 0 <= student.data.metrics["student/test_top1"] <= 1
    assert "filled teacher outputs ('logits', 'stages', 'attentions')" in out.stdout + out.stderr
