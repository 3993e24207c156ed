"""Final evaluation: accuracy, agreement, KL, calibration, and the deployment costs KD is for."""

from __future__ import annotations

import hashlib
import io

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


# Parameters, FLOPs and size depend on the architecture, not on the weights: the trials of an in-process sweep
# (one student architecture, new weights each trial) count them once. Latency is never kept here: it is a
# measurement of the machine at that moment (kdexp.measure.latency times it afresh, teacher and student together).
_COSTS: dict[str, dict] = {}
_COSTS_KEPT = 16


def architecture_key(model: nn.Module, *settings: object) -> str:
    """The module tree (with layer hyper-parameters) and every tensor's name, shape and dtype, + `settings`."""
    tensors = [(k, tuple(getattr(v, "shape", ())), str(getattr(v, "dtype", type(v).__name__)))
               for k, v in model.state_dict().items()]
    text = repr((type(model).__qualname__, repr(model), tensors, settings))
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def cost_metrics(model: nn.Module, input_shape: tuple[int, ...]) -> dict:
    """Parameters, FLOPs and size on disk (memoized per architecture and input shape)."""
    key = architecture_key(model, tuple(input_shape))
    if key not in _COSTS:
        remember(_COSTS, key, measure_costs(model, input_shape), _COSTS_KEPT)
    return dict(_COSTS[key])


def measure_costs(model: nn.Module, input_shape: tuple[int, ...]) -> dict:
    return {"params": num_params(model), "flops": count_flops(model, input_shape), "size_bytes": size_on_disk(model)}


def ratios(student: dict[str, float], teacher: dict[str, float]) -> dict[str, float]:
    """student/teacher for every cost and accuracy metric both have but latency, whose ratios come from
    blocks timed together (kdexp.measure.latency)."""
    return {f"{k}_ratio": student[k] / teacher[k] for k in student
            if k in teacher and teacher[k] and not k.startswith("latency")}
