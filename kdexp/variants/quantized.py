"""`variant=quantized`: a quantization-aware (QAT) student distilled from a full-precision teacher, then
converted to a real int8 model and evaluated as such on the CPU.

Tooling: torch's eager-mode QAT (`torch.ao.quantization`: QuantStub/DeQuantStub, `fuse_modules_qat`,
`prepare_qat`, `convert`). On torch 2.13 every quantization flow in torch itself is deprecated in favour
of torchao (eager mode and PT2E alike), but torchao's int8 convolutions only become real int8 kernels
through torch.compile/Inductor; eager mode is the one flow that still yields executable int8 modules
on a plain CPU install. Its deprecation warnings are silenced here, where we chose it on purpose.

Families: the small CNNs (`cnn_*`: conv+BN+ReLU fused), MLPs (`mlp_*`) and CIFAR ResNets (`resnet*`: residual
adds go through a FloatFunctional, conv+BN(+ReLU) fused); VGGs and ShuffleNetV2 convert as they are. Any
other architecture (WRNs, MobileNetV2, ShuffleNetV1, ResNet50: tensor `+` in their blocks) is rejected
before training, with a clear error, when its int8 conversion does not run.
Methods: logit-based ones only (kd, dkd, dist, kd_std, none): feature maps of a quantized student are
not comparable to a float teacher's and the zoo's feature interface is not quantized.
"""

from __future__ import annotations

import copy
import logging
import warnings
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import lightning as L
import torch
from torch import Tensor, nn
from torch.ao import quantization as tq
from torch.ao.nn import quantized as ao_nn

from kdexp.evaluate import accuracy_metrics, cost_metrics, count_flops, cpu_latency_ms, size_on_disk
from kdexp.matrix import use_student_lr
from kdexp.models.base import num_params
from kdexp.models.resnet import BasicBlock
from kdexp.module import DistillModule
from kdexp.pipeline import (
    agreement, resolve_teacher, teacher_metrics, trial_callback, trial_context, write_results,
)
from kdexp.stages import Context, build_method, evaluate, fit
from kdexp.validate import ConfigError
from kdexp.variants.links import lineage_tags, method_label, student_run, vanilla_baseline, variant_context

log = logging.getLogger("kdexp")
BACKENDS = ("x86", "fbgemm", "qnnpack", "onednn")


@contextmanager
def quiet_quantization():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*(torch\.ao\.quantization|reduce_range|quantize_per).*")
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        yield


class QuantizedStudent(nn.Module):
    """A zoo model between QuantStub and DeQuantStub: float tensors in and out, int8 inside once converted."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.quant, self.model, self.dequant = tq.QuantStub(), model, tq.DeQuantStub()

    def forward(self, x: Tensor) -> Tensor:
        return self.dequant(self.model(self.quant(x)))


class QuantizableBasicBlock(nn.Module):
    """The ResNet BasicBlock with its residual add as a FloatFunctional (int8 tensors cannot use `+`)."""

    def __init__(self, block: BasicBlock):
        super().__init__()
        self.conv1, self.relu, self.conv2, self.shortcut = block.conv1, block.relu, block.conv2, block.shortcut
        self.skip_add = ao_nn.FloatFunctional()

    def forward(self, x: Tensor) -> Tensor:
        return self.skip_add.add(self.conv2(self.relu(self.conv1(x))), self.shortcut(x))


def swap_residual_blocks(model: nn.Module) -> None:
    for name, child in model.named_children():
        if isinstance(child, BasicBlock):
            setattr(model, name, QuantizableBasicBlock(child))
        else:
            swap_residual_blocks(child)


FUSABLE = ((nn.Conv2d, nn.BatchNorm2d, nn.ReLU), (nn.Conv2d, nn.BatchNorm2d), (nn.Linear, nn.ReLU))


def fusion_groups(model: nn.Module) -> list[list[str]]:
    """Names of conv+BN(+ReLU) and linear+ReLU runs inside Sequentials, and conv1+relu of residual blocks."""
    groups: list[list[str]] = []
    for prefix, module in model.named_modules():
        dot = f"{prefix}." if prefix else ""
        if isinstance(module, QuantizableBasicBlock):
            groups.append([f"{dot}conv1.0", f"{dot}conv1.1", f"{dot}relu"])
        if not isinstance(module, nn.Sequential):
            continue
        children = list(module.named_children())
        i = 0
        while i < len(children):
            for pattern in FUSABLE:
                run = children[i : i + len(pattern)]
                if len(run) == len(pattern) and all(type(m) is t for (_, m), t in zip(run, pattern)):
                    groups.append([f"{dot}{n}" for n, _ in run])
                    i += len(pattern) - 1
                    break
            i += 1
    # a block's conv1 Sequential is also matched alone as conv+BN: keep only the longer group
    covered = {name for g in groups if len(g) == 3 for name in g}
    return [g for g in groups if len(g) == 3 or not set(g) & covered]


def prepare_qat_student(model: nn.Module, backend: str = "x86") -> QuantizedStudent:
    """Fused, fake-quantized copy of `model` for training (torch.ao eager-mode QAT)."""
    if backend not in BACKENDS:
        raise ConfigError(f"variant.backend={backend!r} is invalid: choose one of {', '.join(BACKENDS)}")
    torch.backends.quantized.engine = backend
    wrapped = QuantizedStudent(copy.deepcopy(model)).train()
    swap_residual_blocks(wrapped)
    with quiet_quantization():
        groups = fusion_groups(wrapped)
        if groups:
            tq.fuse_modules_qat(wrapped, groups, inplace=True)
        wrapped.qconfig = tq.get_default_qat_qconfig(backend)
        tq.prepare_qat(wrapped, inplace=True)
    return wrapped


def convert_int8(qat: nn.Module) -> nn.Module:
    """The real int8 model: observers' ranges become scales, weights int8, kernels quantized."""
    with quiet_quantization():
        return tq.convert(copy.deepcopy(qat).cpu().eval(), inplace=False)


def observed(qat: nn.Module) -> nn.Module:
    """A copy whose observers no longer move: evaluating it cannot tune the int8 ranges to the data it sees."""
    model = copy.deepcopy(qat).eval()
    model.apply(tq.disable_observer)
    return model


class QATDistillModule(DistillModule):
    """DistillModule whose QAT student keeps its observers still during validation: int8 ranges come from
    training batches only."""

    def on_validation_epoch_start(self):
        self.student.apply(tq.disable_observer)

    def on_validation_epoch_end(self):
        super().on_validation_epoch_end()
        self.student.apply(tq.enable_observer)


def float_view(qat: nn.Module) -> nn.Module:
    """The QAT student's float weights with fake quantization switched off (the same weights, unquantized)."""
    model = copy.deepcopy(qat).eval()
    model.apply(tq.disable_fake_quant)
    model.apply(tq.disable_observer)
    return model


def check_quantizable(model: nn.Module, input_shape: tuple[int, ...], backend: str, arch: str) -> None:
    """Prepare, convert and run the architecture once: an unsupported family fails before any training."""
    try:
        with quiet_quantization(), torch.no_grad():
            qat = prepare_qat_student(model, backend)
            qat(torch.zeros(2, *input_shape))
            convert_int8(qat)(torch.zeros(2, *input_shape))
    except ConfigError:
        raise
    except Exception as exc:
        raise ConfigError(f"variant=quantized: student {arch!r} cannot be converted to int8 in eager mode "
                          f"({exc}); "
                          "supported: cnn_*, mlp_*, resnet* (CIFAR), vgg*, shufflenetv2") from None


@torch.inference_mode()
def int8_logits(model: nn.Module, x: Tensor, batch_size: int) -> Tensor:
    return torch.cat([model(x[i : i + batch_size].cpu()) for i in range(0, len(x), batch_size)])


def int8_metrics(ctx: Context, int8: nn.Module, float_arch: nn.Module) -> dict[str, float]:
    """evaluate()'s metrics for a converted model (which has no parameters to count or to find a device by):
    params and FLOPs of the float architecture (the same weights and operations), size and latency its own."""
    x, y = ctx.dm.split_tensors("test")
    logits = int8_logits(int8, x, ctx.conf["data"].get("eval_batch_size", 1024))
    ctx.test["student"] = logits
    ev = ctx.conf["eval"]
    out = {f"test_{k}": v for k, v in accuracy_metrics(logits, y, ev["ece_bins"]).items()}
    out.update({
        "params": num_params(float_arch), "flops": count_flops(float_arch, ctx.input_shape),
        "size_bytes": size_on_disk(int8),
        "latency_b1_ms": cpu_latency_ms(int8, ctx.input_shape, 1, ev["latency_repeats"]),
        f"latency_b{ev['latency_batch']}_ms": cpu_latency_ms(int8, ctx.input_shape, ev["latency_batch"],
                                                              max(3, ev["latency_repeats"] // 4)),
    })
    return out


def quantized_report(ctx: Context, qat: nn.Module) -> tuple[nn.Module, dict[str, float]]:
    """Convert, then measure: student/* = the int8 model; student/float/* = the same weights in float (accuracy)
    with the costs of the float architecture; student/fake_quant/* = the QAT model as trained."""
    ev = ctx.conf["eval"]
    float_arch, qat = ctx.build("student"), observed(qat)
    metrics = {f"student/fake_quant/{k}": v for k, v in evaluate(ctx, qat, "fake_quant", costs=False).items()}
    same_float = evaluate(ctx, float_view(qat), "float", costs=False)
    metrics.update({f"student/float/{k}": v for k, v in same_float.items()})
    metrics.update({f"student/float/{k}": v for k, v in
                    cost_metrics(float_arch, ctx.input_shape, ev["latency_batch"], ev["latency_repeats"]).items()})
    int8 = convert_int8(qat)
    metrics.update({f"student/{k}": v for k, v in int8_metrics(ctx, int8, float_arch).items()})
    metrics["student/int8_size_ratio"] = metrics["student/size_bytes"] / metrics["student/float/size_bytes"]
    metrics["student/int8_speedup_b1"] = metrics["student/float/latency_b1_ms"] / metrics["student/latency_b1_ms"]
    return int8, metrics


def run(conf: dict, run_dir: Path, cell: str = "") -> dict[str, float]:
    v = conf["variant"]
    label = method_label(conf, "qat_int8")
    ctx = variant_context(conf, run_dir, {"kdexp.variant": "quantized", "kdexp.quant_backend": v["backend"]})
    check_quantizable(ctx.build("student"), ctx.input_shape, v["backend"], conf["student"]["arch"])
    L.seed_everything(conf["seed"], verbose=False)
    teacher, student = ctx.build("teacher"), ctx.build("student")
    method = build_method(ctx, student, teacher)
    if method.needs - {"logits", "index"}:
        raise ConfigError(f"variant=quantized: distill={conf['distill']['name']} needs features "
                          f"({sorted(method.needs)}); use a logit-based method (kd, dkd, dist, kd_std, none)")
    teacher_meta = resolve_teacher(ctx, teacher)
    use_student_lr(ctx.conf)
    baseline_meta = vanilla_baseline(ctx)
    qat = prepare_qat_student(student, v["backend"])
    d, epochs = conf["distill"], conf["trainer"]["max_epochs"]
    name = f"{label}:{conf['teacher']['arch']}->{conf['student']['arch']}"
    tags = lineage_tags(teacher_meta, baseline_meta)
    with student_run(ctx, name, cell, label, tags) as run_id, quiet_quantization():
        module = QATDistillModule(qat, teacher=teacher, method=method, weights=d["weights"],
                                  temperature=d.get("temperature", 4.0), recipe=ctx.conf["recipe"],
                                  max_epochs=epochs, metric_sink=ctx.tracker.sink(run_id))
        trial = trial_context(conf)
        fit(ctx, module, epochs, [trial_callback(trial)] if trial is not None else [])
        metrics = {"student/val_acc": module.last_val_acc, "student/best_val_acc": module.best_val_acc,
                   "student/best_epoch": module.best_epoch,
                   "student/adapter_params": sum(p.numel() for p in method.parameters())}
        if module.best_state is not None:  # the best-validation epoch, converted too: int8 accuracy
            x, y = ctx.dm.split_tensors("test")
            best = int8_logits(convert_int8(module.best_student()), x, 1024)
            metrics.update({f"student/best_val/test_{k}": v
                            for k, v in accuracy_metrics(best, y, conf["eval"]["ece_bins"]).items()})
        if conf["finetune"]["epochs"] > 0:  # still quantization-aware: the int8 model is what gets deployed
            metrics.update(finetune(ctx, run_id, qat))
        int8, measured = quantized_report(ctx, qat)
        metrics.update(measured)
        metrics.update(teacher_metrics(teacher_meta, baseline_meta))
        metrics.update(agreement(ctx, "student"))
        ctx.tracker.log_metrics(run_id, metrics)
        shown = {**ctx.conf, "distill": {**d, "name": label}}  # the summary's row: e.g. "kd+qat_int8"
        write_results(replace(ctx, conf=shown), run_id, metrics, int8)
    return metrics


def finetune(ctx: Context, run_id: str, qat: nn.Module) -> dict[str, float]:
    """pipeline.train_student's fine-tuning stage, on the QAT student."""
    conf = ctx.conf
    before = {f"student/pre_finetune/{k}": v for k, v in evaluate(ctx, observed(qat), "s", costs=False).items()}
    recipe = {**conf["recipe"], "lr": conf["recipe"]["lr"] * conf["finetune"]["lr_scale"]}
    tune = QATDistillModule(qat, recipe=recipe, max_epochs=conf["finetune"]["epochs"], track_best=False,
                            metric_sink=ctx.tracker.sink(run_id, "finetune/"))
    fit(ctx, tune, conf["finetune"]["epochs"])
    return before
