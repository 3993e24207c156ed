"""What a run leaves in MLflow beyond metrics: its model as an MLflow Model and its data set as a dataset input.

kdexp talks to MLflow through an MlflowClient and explicit run ids (no active run). The model is an MLflow 3
LoggedModel made in the run's experiment, linked to the run as its output, and saved by the pytorch flavor
in the "pt2" format (a torch.export graph). Loading it needs torch and mlflow only, not kdexp:

    mlflow.set_tracking_uri(URI); model = mlflow.pytorch.load_model("runs:/<run id>/model")
    logits = model(x)              # x: float32 (N, C, H, W), normalized as the run's data set was

(`mlflow.pyfunc.load_model` works too, on numpy arrays.) The graph is the model in eval mode: it cannot be
trained further or switched to train mode.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from kdexp.measure.latency import cpu_eval_copy
from kdexp.shipping.export import example_batch, quiet_export

MODEL_NAME = "model"  # runs:/<run id>/model
TOKENIZER_DIR = "tokenizer"  # a text run's tokenizer (save_pretrained's files): runs:/<run id>/tokenizer


def client_and_uri(tracker_or_client: Any) -> tuple[Any, str]:
    """(MlflowClient, tracking URI) from a kdexp Tracker or an MlflowClient."""
    client = getattr(tracker_or_client, "client", tracker_or_client)
    uri = getattr(tracker_or_client, "uri", None) or client.tracking_uri
    return client, uri


@contextmanager
def tracking_uri(uri: str) -> Iterator[None]:
    """The flavor's log_model resolves its store from MLflow's global tracking URI: point it at ours for the
    call, then restore both the global and $MLFLOW_TRACKING_URI (which set_tracking_uri also rewrites)."""
    import mlflow
    from mlflow.tracking._tracking_service import utils

    previous, previous_env = getattr(utils, "_tracking_uri", None), os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous)
        if previous_env is not None:
            os.environ["MLFLOW_TRACKING_URI"] = previous_env


def _new_logged_model(client: Any, run_id: str, name: str, tags: dict[str, str] | None):
    # Made here, in the run's experiment: the flavors would put it in the global "current" experiment, where
    # runs:/<id>/model (which searches the run's experiment) would not find it.
    experiment_id = client.get_run(run_id).info.experiment_id
    return client.create_logged_model(experiment_id, name=name, source_run_id=run_id,
                                      tags={k: str(v) for k, v in (tags or {}).items()})


def _link_output(client: Any, run_id: str, model_id: str) -> None:
    """Without an active run the flavors link nothing: mark the model as the run's output ourselves."""
    from mlflow.entities import LoggedModelOutput

    client.log_outputs(run_id, [LoggedModelOutput(model_id, step=0)])


def log_model(tracker_or_client: Any, run_id: str, model: nn.Module, input_example: torch.Tensor, *,
              name: str = MODEL_NAME, tags: dict[str, str] | None = None) -> str:
    """Log `model` (eval mode, CPU copy) as the MLflow Model `name` of run `run_id`; returns its model id.

    `input_example`: a few normalized input samples (N, C, H, W); two are stored as the example and fix the
    signature (float32 (-1, C, H, W) -> float32 (-1, classes)).
    """
    import mlflow.pytorch
    from mlflow.models import infer_signature

    client, uri = client_and_uri(tracker_or_client)
    cpu_model, x = cpu_eval_copy(model), example_batch(input_example).numpy()
    with torch.no_grad():
        signature = infer_signature(x, cpu_model(torch.from_numpy(x)).numpy())
    logged = _new_logged_model(client, run_id, name, tags)
    with tracking_uri(uri), quiet_export():
        mlflow.pytorch.log_model(cpu_model, name=name, model_id=logged.model_id, input_example=x,
                                 signature=signature, serialization_format="pt2", pip_requirements=requirements())
    _link_output(client, run_id, logged.model_id)
    return logged.model_id


def log_onnx_model(tracker_or_client: Any, run_id: str, onnx_path, input_example: torch.Tensor, *,
                   name: str = MODEL_NAME, tags: dict[str, str] | None = None) -> str:
    """An ONNX file as the run's MLflow Model (onnx flavor, runs in ONNX Runtime): for models torch.export
    cannot take, i.e. variant=quantized's int8 student (student_int8.onnx). Load with mlflow.onnx.load_model
    or mlflow.pyfunc.load_model("runs:/<id>/model") (numpy in, {"logits": numpy} out)."""
    import mlflow.onnx
    import onnx
    from mlflow.models import infer_signature

    from kdexp.shipping.export import onnx_predict, onnx_session

    client, uri = client_and_uri(tracker_or_client)
    x = example_batch(input_example).numpy()
    signature = infer_signature(x, onnx_predict(onnx_session(onnx_path), x))
    logged = _new_logged_model(client, run_id, name, tags)
    with tracking_uri(uri), quiet_export():
        mlflow.onnx.log_model(onnx.load(str(onnx_path)), name=name, model_id=logged.model_id, input_example=x,
                              signature=signature, save_as_external_data=False,
                              onnx_execution_providers=["CPUExecutionProvider"],
                              pip_requirements=["onnx", "onnxruntime", "numpy", f"mlflow=={mlflow.__version__}"])
    _link_output(client, run_id, logged.model_id)
    return logged.model_id


def requirements() -> list[str]:
    """The graph needs torch only. Given explicitly: MLflow would otherwise infer them by importing the model's
    code in a subprocess (~10-30 s) and list kdexp's whole environment."""
    import mlflow

    return [f"torch=={torch.__version__.split('+')[0]}", f"mlflow=={mlflow.__version__}", "numpy"]


def dataset_digest(fingerprint: dict) -> str:
    """16 hex digits of the data module's fingerprint: equal data (content, split, limit, ...) = equal digest."""
    text = json.dumps(fingerprint, sort_keys=True, default=str)
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


def dataset_name(dm: Any) -> str:
    folder = getattr(dm, "folder", None)  # image folders: the user's folder names the data set
    return f"{dm.name}:{folder.name}" if folder is not None else dm.name


def dataset_source(dm: Any) -> tuple[str, str]:
    """(source type, source JSON): the folder the files were read from, else the code that makes them."""
    folder = getattr(dm, "folder", None) or getattr(dm, "_data_dir", None)
    if folder is not None:
        return "local", json.dumps({"uri": str(folder)})
    return "code", json.dumps({"tags": {"kdexp.data": dm.name}})


def dataset_entity(dm: Any):
    """An MLflow Dataset for a kdexp data module (loads its splits if not yet loaded)."""
    import numpy as np
    from mlflow.data.schema import TensorDatasetSchema
    from mlflow.entities import Dataset
    from mlflow.types import Schema, TensorSpec

    fingerprint = dm.fingerprint()
    sizes = {split: len(dm.split_tensors(split)[1]) for split in ("train", "val", "test")}
    dtype = np.dtype(str(getattr(dm, "input_dtype", "float32")).removeprefix("torch."))  # text: int64 token ids
    schema = TensorDatasetSchema(features=Schema([TensorSpec(dtype, (-1, *dm.input_shape))]),
                                 targets=Schema([TensorSpec(np.dtype(np.int64), (-1,))]))
    profile = {"num_rows": sum(sizes.values()), **{f"{k}_rows": v for k, v in sizes.items()},
               "num_classes": dm.num_classes, "input_shape": list(dm.input_shape), "limit": fingerprint["limit"],
               "val_fraction": fingerprint["val_fraction"], "split_seed": fingerprint["split_seed"],
               "content_blake2b": fingerprint["content_blake2b"]}
    source_type, source = dataset_source(dm)
    return Dataset(name=dataset_name(dm), digest=dataset_digest(fingerprint), source_type=source_type,
                   source=source, schema=json.dumps(schema.to_dict()), profile=json.dumps(profile))


def log_dataset_input(tracker_or_client: Any, run_id: str, dm: Any, context: str = "training"):
    """Record the run's data set as an MLflow dataset input (the UI's Dataset column); returns the Dataset.

    Name: the data set (image folders: `image_folder:<folder>`); digest: from dm.fingerprint(); profile: split
    sizes, classes, input shape; input tag mlflow.data.context=`context`. Split sizes are also run tags
    kdexp.data.<split>_rows, so they can be queried.
    """
    from mlflow.entities import DatasetInput, InputTag

    client, _ = client_and_uri(tracker_or_client)
    dataset = dataset_entity(dm)
    client.log_inputs(run_id, [DatasetInput(dataset, [InputTag("mlflow.data.context", context)])])
    profile = json.loads(dataset.profile)
    for split in ("train", "val", "test"):
        client.set_tag(run_id, f"kdexp.data.{split}_rows", str(profile[f"{split}_rows"]))
    return dataset


def log_tokenizer(tracker: Any, run_id: str, tokenizer: Any) -> None:
    """A text model's tokenizer as the run's artifact folder `tokenizer/` (AutoTokenizer.from_pretrained loads
    it): its vocabulary, which kdexp-export rebuilds a run without an MLflow Model from, and how to tokenize.

    Args:
        tracker: the run's tracker (kdexp.tracking.runs).
        run_id: the run that trained the model.
        tokenizer: the transformers tokenizer its data was tokenized with.
    """
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory(prefix="kdexp-tokenizer-") as tmp:
        tokenizer.save_pretrained(tmp)
        for path in sorted(Path(tmp).iterdir()):
            tracker.log_artifact(run_id, path, TOKENIZER_DIR)


def log_student_exports(tracker_or_client: Any, run_id: str, model: nn.Module, test_x: torch.Tensor, out_dir,
                        *, batch: int = 256, repeats: int = 20) -> dict[str, float]:
    """The student as `student.onnx` (checked on `test_x`, a test batch of ~256, and timed; see
    kdexp.shipping.export.onnx_metrics) and `student.pt2`, both logged as run artifacts under exports/."""
    from pathlib import Path

    from kdexp.shipping.export import export_program, export_pt2, onnx_metrics

    client, _ = client_and_uri(tracker_or_client)
    out_dir = Path(out_dir)
    program = export_program(model, test_x)
    onnx_path, pt2_path = out_dir / "student.onnx", export_pt2(program, None, out_dir / "student.pt2")
    metrics = onnx_metrics(model, test_x, batch, path=onnx_path, repeats=repeats, program=program)
    for path in (onnx_path, pt2_path):
        client.log_artifact(run_id, str(path), "exports")
    return metrics


def log_int8_exports(tracker_or_client: Any, run_id: str, qat: nn.Module, int8: nn.Module,
                     calibration: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor | None, out_dir,
                     *, batch: int = 256, repeats: int = 20) -> dict[str, float]:
    """variant=quantized: `student_int8.onnx` (QDQ, see kdexp.shipping.int8) beside `student_float.onnx` (the
    same weights in float), logged under exports/; returns kdexp.shipping.int8.int8_onnx_metrics."""
    from pathlib import Path

    from kdexp.shipping.int8 import int8_onnx_metrics

    client, _ = client_and_uri(tracker_or_client)
    int8_path, float_path = Path(out_dir) / "student_int8.onnx", Path(out_dir) / "student_float.onnx"
    metrics = int8_onnx_metrics(qat, int8, calibration, test_x, test_y, batch, path=int8_path,
                                float_path=float_path, repeats=repeats)
    for path in (int8_path, float_path):
        client.log_artifact(run_id, str(path), "exports")
    return metrics
