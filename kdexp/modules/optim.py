"""The optimiser and learning-rate schedule a recipe asks for, with torch's fused kernels where they apply."""

from __future__ import annotations

import torch


def fused_kernels(params: list) -> bool:
    """Whether torch's fused optimizer kernels apply: one kernel over all tensors instead of a Python loop of
    small ops, 2.4-3.6x faster steps on CPU (benchmarks/optimizer_step.py). Parameters or param-group dicts."""
    tensors = [t for p in params for t in (p["params"] if isinstance(p, dict) else [p])]
    return bool(tensors) and all(t.is_floating_point() and t.device.type in ("cpu", "cuda") for t in tensors)


def build_optimizer(params: list, recipe: dict, max_epochs: int, fused: bool | None = None):
    """fused: None uses torch's fused kernels where they apply (same update rule, within float rounding);
    False forces the per-tensor loop (benchmarks and tests compare the two)."""
    name, lr, wd = recipe.get("optimizer", "sgd"), float(recipe["lr"]), float(recipe.get("weight_decay", 0))
    fused = {"fused": True} if fused is not False and fused_kernels(params) else {}
    if name == "sgd":
        opt = torch.optim.SGD(
            params, lr=lr, momentum=recipe.get("momentum", 0.9), weight_decay=wd,
            nesterov=bool(recipe.get("nesterov", False)), **fused,
        )
    elif name == "adam":
        opt = torch.optim.Adam(params, lr=lr, weight_decay=wd, **fused)
    elif name == "adamw":
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=wd, **fused)
    else:
        raise ValueError(f"recipe.optimizer={name!r} is not one of: sgd, adam, adamw")
    schedule = recipe.get("schedule", "constant")
    if schedule == "cosine":
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, max_epochs))
    elif schedule == "multistep":
        sched = torch.optim.lr_scheduler.MultiStepLR(
            opt, milestones=list(recipe.get("milestones", [])), gamma=float(recipe.get("gamma", 0.1))
        )
    elif schedule == "constant":
        return opt
    else:
        raise ValueError(f"recipe.schedule={schedule!r} is not one of: cosine, multistep, constant")
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}
