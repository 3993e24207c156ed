"""Final evaluation: accuracy, agreement, KL, calibration, and the deployment costs KD is for."""

from __future__ import annotations

import hashlib
import io
import statistics
import time

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode
from torchmetrics.functional.classification import multiclass_calibration_error

from kdexp.caching.fingerprint import remember
from kdexp.models.base import example_input, num_params


@torch.inference_mode()
def predict_logits(model: nn.Module, x: Tensor, batch_size: int = 1024) -> Tensor:
    model.eval()
    device = next(model.parameters()).device
    return torch.cat([model(x[i : i + batch_size].to(device)).float().cpu() for i in range(0, len(x), batch_size)])


def accuracy_metrics(logits: Tensor, y: Tensor, ece_bins: int = 15) -> dict[str, float]:
    k = min(5, logits.shape[1])
    topk = logits.topk(k, dim=1).indices
    return {
        "top1": (topk[:, 0] == y).float().mean().item(),
        "top5": (topk == y[:, None]).any(dim=1).float().mean().item(),
        "ece": multiclass_calibration_error(
            logits.softmax(1), y, num_classes=logits.shape[1], n_bins=ece_bins, norm="l1"
        ).item(),
    }


def agreement_metrics(student_logits: Tensor, teacher_logits: Tensor) -> dict[str, float]:
    """Top-1 agreement and KL(teacher || student) at T=1, averaged over samples."""
    kl = F.kl_div(
        F.log_softmax(student_logits, 1), F.log_softmax(teacher_logits, 1), reduction="batchmean", log_target=True
    )
    agree = (student_logits.argmax(1) == teacher_logits.argmax(1)).float().mean()
    return {"agreement": agree.item(), "kl_teacher": kl.item()}


def count_flops(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """FLOPs of one forward pass on one sample (torch's counter: 2 per multiply-add)."""
    model.eval()
    device = next(model.parameters()).device
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(example_input(model, input_shape, 1, device=device))
    return int(counter.get_total_flops())


def size_on_disk(model: nn.Module) -> int:
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.tell()


@torch.inference_mode()
def cpu_latency_ms(model: nn.Module, input_shape: tuple[int, ...], batch: int, repeats: int = 20) -> float:
    """Median wall time of one forward pass on the CPU, after warm-up."""
    model = model.to("cpu").eval()
    x = example_input(model, input_shape, batch, random=True)
    warm_until, warm_runs = time.perf_counter() + 0.25, 0
    while warm_runs < 3 or (time.perf_counter() < warm_until and warm_runs < 200):  # allocator/kernel warm-up
        model(x)
        warm_runs += 1
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model(x)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


# Costs depend on the architecture, not on the weights: the trials of an in-process sweep (one student
# architecture, new weights each trial) measure them once, which also keeps their latencies comparable.
_COSTS: dict[str, dict] = {}
_COSTS_KEPT = 16


def architecture_key(model: nn.Module, *settings: object) -> str:
    """The module tree (with layer hyper-parameters) and every tensor's name, shape and dtype, + `settings`."""
    tensors = [(k, tuple(getattr(v, "shape", ())), str(getattr(v, "dtype", type(v).__name__)))
               for k, v in model.state_dict().items()]
    text = repr((type(model).__qualname__, repr(model), tensors, settings, torch.get_num_threads()))
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def cost_metrics(model: nn.Module, input_shape: tuple[int, ...], latency_batch: int, repeats: int) -> dict:
    """Parameters, FLOPs, size on disk and CPU latency at batch 1 and `latency_batch` (memoized per architecture)."""
    key = architecture_key(model, tuple(input_shape), latency_batch, repeats)
    if key not in _COSTS:
        remember(_COSTS, key, measure_costs(model, input_shape, latency_batch, repeats), _COSTS_KEPT)
    return dict(_COSTS[key])


def measure_costs(model: nn.Module, input_shape: tuple[int, ...], latency_batch: int, repeats: int) -> dict:
    device = next(model.parameters()).device
    cpu_model = model.to("cpu")
    out = {
        "params": num_params(cpu_model),
        "flops": count_flops(cpu_model, input_shape),
        "size_bytes": size_on_disk(cpu_model),
        "latency_b1_ms": cpu_latency_ms(cpu_model, input_shape, 1, repeats),
        f"latency_b{latency_batch}_ms": cpu_latency_ms(cpu_model, input_shape, latency_batch, max(3, repeats // 4)),
    }
    model.to(device)
    return out


def ratios(student: dict[str, float], teacher: dict[str, float]) -> dict[str, float]:
    """student/teacher for every cost and accuracy metric both have."""
    return {f"{k}_ratio": student[k] / teacher[k] for k in student if k in teacher and teacher[k]}
