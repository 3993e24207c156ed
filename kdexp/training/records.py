"""What a trained model leaves in its MLflow run beyond metrics: its data set (the UI's Dataset column), a text
model's tokenizer (tokenizer/), the model itself as an MLflow Model (loadable without kdexp), and for a student
the deployable exports (ONNX, checked with ONNX Runtime and timed beside torch; torch.export .pt2) and, with
`tracking.register=NAME`, a version in MLflow's Model Registry. Rank 0 only."""

from __future__ import annotations

import logging

from torch import nn

from kdexp.models.base import own_rows
from kdexp.runtime import distributed
from kdexp.training.context import Context

log = logging.getLogger("kdexp")


def _records_here(ctx: Context) -> bool:
    """Rank 0 with a store: other ranks and store-less trackers record nothing."""
    return distributed.is_rank_zero() and ctx.run.tracker.client is not None


def record_model(ctx: Context, run_id: str, model: nn.Module, role: str) -> str | None:
    """Dataset input, text tokenizer and MLflow Model of one trained model (and a registry version for a
    registered student).

    Args:
        ctx: the experiment (its data set, `tracking:` switches).
        run_id: the model's run.
        model: the trained model.
        role: its kdexp.role ("teacher", "baseline", "link", "student").

    Returns:
        The logged model's id, or None when off or not recorded on this rank.
    """
    if not _records_here(ctx):
        return None
    from kdexp.tracking.models import log_dataset_input, log_model, log_tokenizer

    tracking = ctx.conf["tracking"]
    log_dataset_input(ctx.run.tracker, run_id, ctx.dm, context="training")
    tokenizers = ctx.dm.tokenizers() if hasattr(ctx.dm, "tokenizers") else []
    if tokenizers:  # text: what an export without the MLflow Model needs; the one this model reads
        log_tokenizer(ctx.run.tracker, run_id, tokenizers[min(getattr(model, "tokenization", 0), len(tokenizers) - 1)])
    if not tracking.get("log_model", True):
        return None
    x, _ = ctx.dm.split_tensors("test")
    model_id = log_model(ctx.run.tracker, run_id, model, own_rows(model, x[:8]), tags={"kdexp.role": role})
    if role == "student" and tracking.get("register"):
        register(ctx, model_id, tracking["register"])
    return model_id


def register(ctx: Context, model_id: str, name: str) -> None:
    import mlflow

    from kdexp.tracking.models import tracking_uri

    with tracking_uri(ctx.run.tracker.uri):
        version = mlflow.register_model(f"models:/{model_id}", name)
    log.info("registered the student as %s version %s", name, version.version)


def student_exports(ctx: Context, run_id: str, student: nn.Module) -> dict[str, float]:
    """ONNX (+ parity and ONNX Runtime latency, interleaved with torch's) and .pt2 of the student.

    Args:
        ctx: the experiment (test inputs, `eval:` and `tracking:` settings, run folder).
        run_id: the student run the exports are logged to.
        student: the float student.

    Returns:
        The exports' student/* metrics ({} when off).
    """
    if not ctx.conf["tracking"].get("export_student", True) or not _records_here(ctx):
        return {}
    from kdexp.tracking.models import log_student_exports

    ev, x = ctx.conf["eval"], ctx.dm.split_tensors("test")[0]
    out = log_student_exports(ctx.run.tracker, run_id, student, own_rows(student, x[:256]), ctx.run.folder / "exports",
                              batch=ev["latency_batch"], repeats=ev["latency_repeats"])
    return {f"student/{k}": float(v) for k, v in out.items()}
