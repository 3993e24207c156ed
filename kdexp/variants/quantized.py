"""`variant=quantized`: a quantization-aware (QAT) student distilled from a full-precision teacher, then
converted to a real int8 model and evaluated as such on the CPU (tooling: kdexp/shipping/quantization.py).

Methods: logit-based ones only (kd, dkd, dist, kd_std, none): feature maps of a quantized student are
not comparable to a float teacher's and the zoo's feature interface is not quantized.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

from torch import nn
from torch.ao import quantization as tq

from kdexp.config.errors import ConfigError
from kdexp.measure.metrics import accuracy_metrics, cost_metrics, count_flops, size_on_disk
from kdexp.models.base import num_params
from kdexp.modules.distill import DistillModule
from kdexp.runtime import distributed
from kdexp.shipping.quantization import (
    check_quantizable,
    convert_int8,
    float_view,
    int8_logits,
    observed,
    prepare_qat_student,
    quiet_quantization,
)
from kdexp.training.context import Context, make_context
from kdexp.training.distilled import StageSpec, distillation_pair, finetune, train_distilled
from kdexp.training.evaluation import agreement, evaluate, latency
from kdexp.training.lifecycle import trial_callbacks
from kdexp.training.results import (
    ReportSpec,
    lineage_tags,
    method_label,
    student_run,
    teacher_metrics,
    write_results,
)
from kdexp.variants import register_variant


class QATDistillModule(DistillModule):
    """DistillModule whose QAT student keeps its observers still during validation: int8 ranges come from
    training batches only."""

    def on_validation_epoch_start(self):
        self.student.apply(tq.disable_observer)

    def on_validation_epoch_end(self):
        super().on_validation_epoch_end()
        self.student.apply(tq.enable_observer)


def int8_metrics(ctx: Context, int8: nn.Module, float_arch: nn.Module) -> dict[str, float]:
    """evaluate()'s metrics for a converted model (which has no parameters to count or to find a device by):
    params and FLOPs of the float architecture (the same weights and operations), size its own (latency: see
    quantized_report)."""
    x, y = ctx.dm.split_tensors("test")
    logits = int8_logits(int8, x, ctx.conf["data"].get("eval_batch_size", 1024))
    ctx.test["student"] = logits
    ev = ctx.conf["eval"]
    out = {f"test_{k}": v for k, v in accuracy_metrics(logits, y, ev["ece_bins"]).items()}
    out.update({
        "params": num_params(float_arch), "flops": count_flops(float_arch, ctx.input_shape),
        "size_bytes": size_on_disk(int8),
    })
    return out


def quantized_report(ctx: Context, qat: nn.Module) -> tuple[nn.Module, dict[str, float]]:
    """Convert, then measure: student/* = the int8 model; student/float/* = the same weights in float (accuracy)
    with the costs of the float architecture; student/fake_quant/* = the QAT model as trained. The int8 and the
    float student are timed with the teacher and baseline, in the same blocks."""
    float_arch, qat = ctx.build("student"), observed(qat)
    metrics = {f"student/fake_quant/{k}": v for k, v in evaluate(ctx, qat, "fake_quant", costs=False).items()}
    same_float = evaluate(ctx, float_view(qat), "float", costs=False)
    metrics.update({f"student/float/{k}": v for k, v in same_float.items()})
    metrics.update({f"student/float/{k}": v for k, v in cost_metrics(float_arch, ctx.input_shape).items()})
    int8 = convert_int8(qat)
    metrics.update({f"student/{k}": v for k, v in int8_metrics(ctx, int8, float_arch).items()})
    metrics.update(latency(ctx, {"student": int8, "student/float": float_arch}))
    metrics["student/int8_size_ratio"] = metrics["student/size_bytes"] / metrics["student/float/size_bytes"]
    metrics["student/int8_speedup_b1"] = metrics["student/float/latency_b1_ms"] / metrics["student/latency_b1_ms"]
    return int8, metrics


def int8_test_metrics(ctx: Context, qat: nn.Module) -> dict[str, float]:
    """Test accuracy of a QAT model once converted to int8 (the best-validation epoch's, say)."""
    x, y = ctx.dm.split_tensors("test")
    logits = int8_logits(convert_int8(qat), x, ctx.conf["data"].get("eval_batch_size", 1024))
    return {f"test_{k}": v for k, v in accuracy_metrics(logits, y, ctx.conf["eval"]["ece_bins"]).items()}


def ship_int8(ctx: Context, run_id: str, qat: nn.Module, int8: nn.Module) -> dict[str, float]:
    """The int8 student as an ONNX QDQ model (torch.export cannot take eager int8 modules), beside the same
    weights in float, logged under exports/ and as the run's MLflow Model; student/onnx_int8_* metrics."""
    if not distributed.is_rank_zero():
        return {}
    from kdexp.tracking.models import log_dataset_input, log_int8_exports, log_onnx_model

    ev, (x, y) = ctx.conf["eval"], ctx.dm.split_tensors("test")
    out_dir, tracker = ctx.run.folder / "exports", ctx.run.tracker
    out = log_int8_exports(tracker, run_id, qat, int8, ctx.dm.split_tensors("train")[0][:512], x, y, out_dir,
                           batch=ev["latency_batch"], repeats=ev["latency_repeats"])
    log_dataset_input(tracker, run_id, ctx.dm, context="training")
    if ctx.conf["tracking"].get("log_model", True):
        log_onnx_model(tracker, run_id, out_dir / "student_int8.onnx", x[:8], tags={"kdexp.role": "student"})
    return {f"student/{k}": float(v) for k, v in out.items()}


@register_variant("quantized")
def run(conf: Mapping, run_dir: Path, cell: str = "") -> dict[str, float]:
    v = conf["variant"]
    label = method_label(conf, "qat_int8")
    tags = {"kdexp.variant": "quantized", "kdexp.quant_backend": v["backend"]}
    ctx = make_context(conf, run_dir, tags, cell=cell)
    check_quantizable(ctx.build("student"), ctx.input_shape, v["backend"], conf["student"]["arch"])
    def logit_method(method) -> None:
        if method.needs - {"logits", "index"}:
            raise ConfigError(f"variant=quantized: distill={conf['distill']['name']} needs features "
                              f"({sorted(method.needs)}); use a logit-based method (kd, dkd, dist, kd_std, none)")

    p = distillation_pair(ctx, check=logit_method)
    teacher_meta, baseline_meta = p.teacher_meta, p.baseline_meta
    qat = prepare_qat_student(p.student, v["backend"])
    name = f"{label}:{conf['teacher']['arch']}->{conf['student']['arch']}"
    lineage = lineage_tags(teacher_meta, baseline_meta)
    with student_run(ctx, name, label, lineage) as run_id, quiet_quantization():
        stage = StageSpec(module=QATDistillModule, callbacks=tuple(trial_callbacks(conf)),
                          best_metrics=lambda best: int8_test_metrics(ctx, best))
        train_metrics = train_distilled(ctx, run_id, qat, p.teacher, p.method, stage)
        metrics = {f"student/{k}": x for k, x in train_metrics.items()}
        # fine-tuning stays quantization-aware: the int8 model is what gets deployed
        metrics.update(finetune(ctx, run_id, qat, QATDistillModule, before=observed))
        int8, measured = quantized_report(ctx, qat)
        metrics.update(measured)
        metrics.update(teacher_metrics(teacher_meta, baseline_meta))
        metrics.update(agreement(ctx, "student"))
        metrics.update(ship_int8(ctx, run_id, qat, int8))
        ctx.run.tracker.log_metrics(run_id, metrics)
        # the summary's row: e.g. kd+qat_int8; the int8 ONNX model is the run's MLflow Model
        write_results(ctx, run_id, metrics, int8, ReportSpec(labels={"distill": label}, exported=False))
    return metrics
