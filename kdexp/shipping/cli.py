"""kdexp-export RUN_ID --format onnx|pt2 [--uri URI] [--out PATH]: a past run's model as one file that runs
without kdexp (ONNX Runtime, or `torch.export.load(path).module()`).

Runs logged with an MLflow Model (kdexp.tracking.models.log_model) are exported from its torch.export graph
(an int8 student logged with log_onnx_model is copied as it is, ONNX only).
Older runs are rebuilt from their weights artifact (student.pt, else teacher.pt / baseline.pt) and the
architecture they record: config.yaml for student runs, the run's params for teacher/baseline runs (a text
one's vocabulary: its tokenizer/ artifact).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from kdexp.shipping.export import FORMATS, ExportError
from kdexp.tracking.locate import add_store_arguments, hydra_style, parsed_uri

WEIGHT_ARTIFACTS = ("student.pt", "teacher.pt", "baseline.pt")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kdexp-export", description="Export the model of a past kdexp run to ONNX or torch.export (.pt2).")
    parser.add_argument("run_id", metavar="RUN_ID", help="MLflow run id (the UI's run page, or kdexp-train's log)")
    parser.add_argument("--format", required=True, choices=FORMATS, help="onnx: ONNX Runtime; pt2: torch.export")
    add_store_arguments(parser)
    parser.add_argument("--out", help="output file (default: <RUN_ID>.<format> in the current folder)")
    return parser


def open_run(uri: str, run_id: str):
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from kdexp.tracking.stores import sqlite_file

    db = sqlite_file(uri)
    if db is not None and not db.is_file():  # MlflowClient would silently create an empty store
        raise ExportError(f"no MLflow store at {db} (--uri {uri})")
    client = MlflowClient(tracking_uri=uri)
    try:
        return client, client.get_run(run_id)
    except MlflowException:
        raise ExportError(f"no run {run_id!r} in {uri}") from None


def logged_model_dir(client, run, tmp: Path) -> Path | None:
    """The run's MLflow Model named "model", downloaded into `tmp`; None when the run has none."""
    import mlflow.artifacts

    from kdexp.tracking.models import MODEL_NAME

    for output in run.outputs.model_outputs if run.outputs else []:
        model = client.get_logged_model(output.model_id)
        if model.name == MODEL_NAME:
            return Path(mlflow.artifacts.download_artifacts(artifact_uri=model.artifact_location, dst_path=str(tmp)))
    return None


def architecture(client, run, tmp: Path) -> tuple[str, dict, int, tuple[int, ...]]:
    """(arch, kwargs, num_classes, input_shape) of an older run, from config.yaml or the run's params."""
    names = {f.path for f in client.list_artifacts(run.info.run_id)}
    if "config.yaml" in names:
        from omegaconf import OmegaConf

        from kdexp.data import create_datamodule, datamodule_options

        conf: Any = OmegaConf.to_container(OmegaConf.load(client.download_artifacts(
            run.info.run_id, "config.yaml", str(tmp))))
        if (conf.get("variant") or {}).get("name") == "quantized":
            raise ExportError(f"run {run.info.run_id} is a variant=quantized run: its student.pt is an int8 eager "
                              "state_dict, which cannot be exported; newer runs log student_int8.onnx")
        if "student" not in conf or "data" not in conf:
            raise ExportError(f"run {run.info.run_id}: config.yaml names no student architecture or data set")
        data = {k: v for k, v in conf["data"].items() if k in datamodule_options(conf["data"]["name"])}
        dm = create_datamodule(conf["data"]["name"], **data)  # images: no data read, only classes and input shape
        kwargs = dict(conf["student"].get("kwargs") or {})
        if hasattr(dm, "model_kwargs"):
            kwargs.update(text_model_kwargs(run.info.run_id, dm, conf["student"]))
        return conf["student"]["arch"], kwargs, dm.num_classes, tuple(dm.input_shape)
    params = run.data.params
    if params.get("arch", "").partition(":")[0] in text_archs():
        return text_run_architecture(client, run, names, tmp)
    try:  # a teacher or baseline run: its params are the cache key spec (kdexp.stages.model_spec)
        return params["arch"], {}, int(params["num_classes"]), tuple(json.loads(params["data.input_shape"]))
    except (KeyError, ValueError):
        raise ExportError(f"run {run.info.run_id} records no architecture (no config.yaml, no arch param)") from None


def text_run_architecture(client, run, names: set[str], tmp: Path) -> tuple[str, dict, int, tuple[int, ...]]:
    """A text teacher/baseline run's architecture: the vocabulary from its tokenizer artifact, the rest from its
    params (the cache key spec); a run from before kdexp logged the tokenizer is refused."""
    from kdexp.models.text import HF_FAMILIES
    from kdexp.tracking.models import TOKENIZER_DIR

    params, run_id = run.data.params, run.info.run_id
    if TOKENIZER_DIR not in names:
        role = run.data.tags.get("kdexp.role", "model")
        raise ExportError(f"run {run_id} is a text {role} run without an MLflow Model: its vocabulary is "
                          "not recorded, so it cannot be rebuilt (tracking.log_model=true)")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(client.download_artifacts(run_id, TOKENIZER_DIR, str(tmp)))
    try:
        input_shape = tuple(json.loads(params["data.input_shape"]))
        kwargs = {"vocab_size": len(tokenizer), "pad_token_id": int(tokenizer.pad_token_id or 0),
                  "max_length": input_shape[-1], **nested(params, "kwargs")}
        if params["arch"].partition(":")[0] in HF_FAMILIES:
            kwargs["hf_config"] = nested(params, "hf_config")
        return params["arch"], kwargs, int(params["num_classes"]), input_shape
    except (KeyError, ValueError):
        raise ExportError(f"run {run_id} records no architecture (arch, num_classes, data.input_shape)") from None


def nested(params: dict[str, str], node: str) -> dict:
    """The flattened params under `node.` (kdexp.tracking.runs.flatten) as a nested dict of typed values."""
    out: dict = {}
    for key, text in params.items():
        if key.startswith(f"{node}."):
            *path, leaf = key[len(node) + 1:].split(".")
            target = out
            for part in path:
                target = target.setdefault(part, {})
            target[leaf] = param_value(text)
    return out


def param_value(text: str) -> Any:
    """A param as flatten wrote it (str(), lists as JSON) back to its value: '64' -> 64, '1e-12' -> 1e-12,
    'True' -> True, 'None' -> None; anything else stays text."""
    constants = {"True": True, "False": False, "None": None}
    if text in constants:
        return constants[text]
    try:
        return json.loads(text)
    except ValueError:
        return text


def text_archs() -> tuple[str, ...]:
    from kdexp.models.text import TEXT_MODELS

    return TEXT_MODELS


def text_model_kwargs(run_id: str, dm, node: dict) -> dict:
    """A text student's vocabulary size, padding id and sequence length (+ hf_config): the run's data is read
    and tokenized again (the tokenizer is a function of it), since a text run's config does not hold them."""
    from kdexp.config.errors import ConfigError
    from kdexp.models.text import HF_FAMILIES

    try:
        kwargs = dm.model_kwargs("student")
    except ConfigError as exc:
        raise ExportError(f"run {run_id} is a text run whose data could not be read again for its "
                          f"vocabulary: {exc}") from None
    if node["arch"].partition(":")[0] in HF_FAMILIES:
        kwargs["hf_config"] = dict(node.get("hf_config") or {})
    return kwargs


def rebuilt_program(client, run, tmp: Path):
    """An older run's model from its weights artifact and recorded architecture."""
    import torch

    from kdexp.config.errors import ConfigError
    from kdexp.models import create_model
    from kdexp.models.base import example_input
    from kdexp.shipping.export import export_program

    names = {f.path for f in client.list_artifacts(run.info.run_id)}
    weights = next((n for n in WEIGHT_ARTIFACTS if n in names), None)
    if weights is None:
        raise ExportError(f"run {run.info.run_id} has no MLflow Model and no weights artifact "
                          f"({', '.join(WEIGHT_ARTIFACTS)}); found: {', '.join(sorted(names)) or 'nothing'}")
    arch, kwargs, num_classes, input_shape = architecture(client, run, tmp)
    try:
        model = create_model(arch, num_classes=num_classes, in_channels=input_shape[0], **kwargs)
    except ConfigError as exc:  # e.g. a hub model's configuration, unreachable here
        raise ExportError(f"run {run.info.run_id}: {arch} cannot be built here: {exc}") from None
    state = torch.load(client.download_artifacts(run.info.run_id, weights, str(tmp)), map_location="cpu")
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise ExportError(f"{weights} of run {run.info.run_id} does not fit {arch}: {exc}") from None
    return export_program(model, example_input(model, input_shape, 2))


def export_run(run_id: str, fmt: str, uri: str, out: str | Path | None = None) -> Path:
    from kdexp.shipping.export import export_onnx, export_pt2

    if fmt not in FORMATS:
        raise ExportError(f"format {fmt!r} is not supported: choose one of {', '.join(FORMATS)}")
    client, run = open_run(uri, run_id)
    target = Path(out) if out is not None else Path(f"{run_id}.{fmt}")
    with tempfile.TemporaryDirectory(prefix="kdexp-export-") as tmp:
        local = logged_model_dir(client, run, Path(tmp))
        if local is None:
            program = rebuilt_program(client, run, Path(tmp))
        elif archive := next(iter(sorted(local.rglob("model.pt2"))), None):
            import torch

            program = torch.export.load(archive)
        elif onnx_file := next(iter(sorted(local.rglob("*.onnx"))), None):  # variant=quantized: int8 ONNX
            if fmt != "onnx":
                raise ExportError(f"the model of run {run_id} is an ONNX model (the int8 student of "
                                  "variant=quantized): only --format onnx is available")
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(onnx_file, target)
            return target
        else:
            raise ExportError(f"the MLflow Model of run {run_id} is neither a pt2 nor an ONNX model")
        return (export_onnx if fmt == "onnx" else export_pt2)(program, None, target)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(hydra_style(sys.argv[1:] if argv is None else argv))
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one bar per artifact otherwise
    try:
        path = export_run(args.run_id, args.format, parsed_uri(args), args.out)
    except ExportError as exc:
        print(f"kdexp-export: error: {exc}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
