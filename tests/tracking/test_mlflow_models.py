"""Runs in the record: the model as an MLflow Model loadable without kdexp, the data set as a dataset input,
and kdexp-export for new and older runs."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from mlflow.entities import LoggedModelStatus
from omegaconf import OmegaConf

from kdexp.data import create_datamodule
from kdexp.models import create_model
from kdexp.shipping.cli import main as export_main
from kdexp.shipping.export import onnx_predict, onnx_session
from kdexp.tracking.models import dataset_digest, log_dataset_input, log_model, log_student_exports
from kdexp.tracking.runs import Tracker

# Loads the model with kdexp made unimportable: proves the MLflow Model needs torch and mlflow only.
LOAD_WITHOUT_KDEXP = """
import json, sys
class NoKdexp:
    def find_spec(self, name, path=None, target=None):
        if name == "kdexp" or name.startswith("kdexp."):
            raise ImportError("kdexp must not be needed to load the model")
sys.meta_path.insert(0, NoKdexp())
import mlflow, mlflow.pyfunc, mlflow.pytorch, numpy as np, torch
mlflow.set_tracking_uri(sys.argv[1])
x = torch.tensor(json.loads(sys.argv[3]))
model = mlflow.pytorch.load_model(f"runs:/{sys.argv[2]}/model")
pyfunc = mlflow.pyfunc.load_model(f"runs:/{sys.argv[2]}/model")
print(json.dumps({"torch": model(x).tolist(), "pyfunc": np.asarray(pyfunc.predict(x.numpy())).tolist()}))
"""


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One store for the module: creating MLflow's tables costs seconds."""
    folder = tmp_path_factory.mktemp("store")
    return Tracker(f"sqlite:///{folder / 'mlflow.db'}", "kdexp", folder / "artifacts")


@pytest.fixture(scope="module")
def digits():
    return create_datamodule("digits")


@pytest.mark.slow
def test_logged_model_loads_in_a_process_without_kdexp(store, digits, tmp_path):
    x, _ = digits.split_tensors("test")
    model = create_model("cnn_tiny", 10, 1).eval()
    run_id = store.start("student:cnn_tiny", {"kdexp.role": "student"})
    model_id = log_model(store, run_id, model, x[:8], tags={"kdexp.role": "student"})
    run = store.client.get_run(run_id)
    assert [o.model_id for o in run.outputs.model_outputs] == [model_id]
    assert run.info.status == "RUNNING"  # logging the model does not end the run
    logged = store.client.get_logged_model(model_id)
    assert logged.name == "model" and logged.experiment_id == store.experiment_id
    assert logged.status == LoggedModelStatus.READY and logged.tags["kdexp.role"] == "student"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MLFLOW_TRACKING_URI")}
    done = subprocess.run([sys.executable, "-c", LOAD_WITHOUT_KDEXP, store.uri, run_id, json.dumps(x[:3].tolist())],
                          capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    with torch.no_grad():
        expected = model(x[:3]).numpy()
    assert np.abs(np.array(out["torch"]) - expected).max() < 1e-5
    assert np.abs(np.array(out["pyfunc"]) - expected).max() < 1e-5


def test_dataset_input_names_the_data_with_a_content_digest(store, digits):
    run_id = store.start("teacher:cnn_medium", {})
    dataset = log_dataset_input(store, run_id, digits)
    found = store.client.get_run(run_id)
    (entry,) = found.inputs.dataset_inputs
    assert (entry.dataset.name, entry.dataset.digest) == ("digits", dataset.digest)
    assert [(t.key, t.value) for t in entry.tags] == [("mlflow.data.context", "training")]
    profile = json.loads(entry.dataset.profile)
    assert (profile["train_rows"], profile["val_rows"], profile["test_rows"]) == (1293, 144, 360)
    assert found.data.tags["kdexp.data.val_rows"] == "144"
    assert json.loads(entry.dataset.schema)["mlflow_tensorspec"]["features"]  # the tensor shapes
    assert dataset.digest == dataset_digest(create_datamodule("digits").fingerprint())  # same data, same digest
    assert dataset.digest != dataset_digest(create_datamodule("digits", limit=100).fingerprint())


def run_export(*args: str) -> int:
    return export_main(list(args))


@pytest.mark.slow
def test_kdexp_export_from_the_logged_model(store, digits, tmp_path, capsys):
    x, _ = digits.split_tensors("test")
    model = create_model("cnn_tiny", 10, 1).eval()
    run_id = store.start("student", {})
    log_model(store, run_id, model, x[:4])
    out = tmp_path / "exported" / "student.onnx"
    assert run_export(run_id, "--format", "onnx", "--uri", store.uri, "--out", str(out)) == 0
    assert capsys.readouterr().out.strip() == str(out)
    with torch.no_grad():
        expected = model(x[:16]).numpy()
    assert np.abs(onnx_predict(onnx_session(out), x[:16]) - expected).max() <= 1e-4
    assert run_export(run_id, "--format", "pt2", "--uri", store.uri, "--out", str(tmp_path / "s.pt2")) == 0
    loaded = torch.export.load(tmp_path / "s.pt2").module()
    assert np.abs(loaded(x[:16]).detach().numpy() - expected).max() <= 1e-5
    # what a training run logs beside its MLflow Model: the ONNX and pt2 files, ONNX checked and timed
    metrics = log_student_exports(store, run_id, model, x[:64], tmp_path / "run", batch=8, repeats=2)
    assert metrics["onnx_parity_ok"] == 1.0 and metrics["onnx_latency_b8_ms"] > 0 and metrics["onnx_speedup_b1"] > 0
    logged = {f.path for f in store.client.list_artifacts(run_id, "exports")}
    assert logged == {"exports/student.onnx", "exports/student.pt2"}


# What a quiet kdexp-export must not print: MLflow's artifact progress bars (tqdm), Lightning's banners
NOISE = ("%|", "it/s]", "\r", "Downloading artifacts", "GPU available", "TPU available", "LOCAL_RANK", "Tip:")


@pytest.mark.slow
def test_the_real_kdexp_export_prints_the_path_and_little_else(store, digits, tmp_path):
    x, _ = digits.split_tensors("test")
    model = create_model("cnn_tiny", 10, 1).eval()
    run_id = store.start("student:cnn_tiny", {"kdexp.role": "student"})
    log_model(store, run_id, model, x[:4])
    store.finish(run_id)
    out = tmp_path / "student.onnx"
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    done = subprocess.run([os.path.join(os.path.dirname(sys.executable), "kdexp-export"), run_id, "--format", "onnx",
                           "--uri", store.uri, "--out", str(out)], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.splitlines() == [str(out)] and out.is_file()
    assert len(done.stderr.splitlines()) <= 2, done.stderr[-3000:]
    assert not [n for n in NOISE if n in done.stdout + done.stderr], done.stderr[-3000:]


def test_kdexp_export_of_an_older_run_from_state_dict_and_config(store, digits, tmp_path):
    x, _ = digits.split_tensors("test")
    model = create_model("cnn_tiny", 10, 1).eval()
    run_id = store.start("kd:cnn_medium->cnn_tiny", {})
    conf = {"data": {"name": "digits", "root": None, "limit": None, "device": "auto"},
            "student": {"arch": "cnn_tiny", "kwargs": {}}, "variant": None}
    OmegaConf.save(conf, tmp_path / "config.yaml")
    torch.save(model.state_dict(), tmp_path / "student.pt")
    for name in ("config.yaml", "student.pt"):
        store.log_artifact(run_id, tmp_path / name)
    out = tmp_path / "old.onnx"
    assert run_export(run_id, "--format", "onnx", "--uri", store.uri, "--out", str(out)) == 0
    with torch.no_grad():
        assert np.abs(onnx_predict(onnx_session(out), x[:8]) - model(x[:8]).numpy()).max() <= 1e-4
    # a teacher run: no config.yaml, the architecture is in its params (the cache key spec)
    teacher = create_model("cnn_small", 10, 1).eval()
    teacher_run = store.start("teacher:cnn_small", {}, {"arch": "cnn_small", "num_classes": "10",
                                                        "data.input_shape": "[1, 8, 8]"})
    torch.save(teacher.state_dict(), tmp_path / "teacher.pt")
    store.log_artifact(teacher_run, tmp_path / "teacher.pt")
    assert run_export(teacher_run, "--format", "pt2", "--uri", store.uri, "--out", str(tmp_path / "t.pt2")) == 0
    with torch.no_grad():
        assert torch.allclose(torch.export.load(tmp_path / "t.pt2").module()(x[:4]), teacher(x[:4]), atol=1e-5)


def test_kdexp_export_errors(store, tmp_path, capsys):
    assert run_export("0123abc", "--format", "onnx", "--uri", store.uri) == 1
    assert f"kdexp-export: error: no run '0123abc' in {store.uri}" in capsys.readouterr().err
    assert run_export("x", "--format", "onnx", "--uri", f"sqlite:///{tmp_path / 'none.db'}") == 1
    assert "no MLflow store at" in capsys.readouterr().err
    assert not (tmp_path / "none.db").exists()
    empty = store.start("empty", {})
    assert run_export(empty, "--format", "onnx", "--uri", store.uri) == 1
    expected = "has no MLflow Model and no weights artifact (student.pt, teacher.pt, baseline.pt)"
    assert expected in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        run_export(empty, "--format", "tflite", "--uri", store.uri)
    assert exc.value.code == 2
    assert re.search(r"invalid choice: 'tflite' \(choose from '?onnx'?, '?pt2'?\)", capsys.readouterr().err)


def test_a_text_runs_flattened_model_params_come_back_as_their_values():
    """kdexp-export rebuilds a text teacher's hf_config and kwargs from its params: the values, typed as logged."""
    from kdexp.shipping.cli import nested
    from kdexp.tracking.runs import flatten

    hf_config = {"num_hidden_layers": 1, "layer_norm_eps": 1e-12, "hidden_act": "gelu", "is_decoder": False,
                 "pruned_heads": None, "sizes": [2, 3], "rope_scaling": {"type": "linear", "factor": 2.0}}
    params = flatten({"arch": "hf", "hf_config": hf_config, "kwargs": {"source": "a/b"}, "num_classes": 3})
    assert nested(params, "hf_config") == hf_config
    assert nested(params, "kwargs") == {"source": "a/b"} and nested(params, "nothing") == {}


@pytest.mark.slow
def test_an_onnx_model_is_the_runs_model_when_torch_export_cannot_take_it(store, digits, tmp_path, capsys):
    import mlflow.pyfunc

    from kdexp.shipping.export import export_onnx
    from kdexp.tracking.models import log_onnx_model, tracking_uri

    x, _ = digits.split_tensors("test")
    model = create_model("cnn_tiny", 10, 1).eval()
    onnx_file = export_onnx(model, x[:2], tmp_path / "student_int8.onnx")  # stands in for the int8 file
    run_id = store.start("kd+qat_int8", {})
    log_onnx_model(store, run_id, onnx_file, x[:4])
    with tracking_uri(store.uri):
        predicted = mlflow.pyfunc.load_model(f"runs:/{run_id}/model").predict(x[:5].numpy())
    with torch.no_grad():
        assert np.abs(predicted["logits"] - model(x[:5]).numpy()).max() <= 1e-4  # ONNX pyfunc: {output name: array}
    assert run_export(run_id, "--format", "onnx", "--uri", store.uri, "--out", str(tmp_path / "copy.onnx")) == 0
    assert (tmp_path / "copy.onnx").read_bytes() == onnx_file.read_bytes()
    assert run_export(run_id, "--format", "pt2", "--uri", store.uri) == 1
    assert "is an ONNX model (the int8 student of variant=quantized): only --format onnx" in capsys.readouterr().err
