"""Policy distillation (Rusu et al. 2016): a student policy matches the teacher's action
distribution on states the teacher (and, with DAgger rounds, the student) visits.

Loss (Rusu et al., eq. 3): KL(softmax(z_T / T) || softmax(z_S)), averaged over states. Only the
teacher is tempered — a low T sharpens its distribution towards its greedy action; the student's
own outputs are what it acts on. With T=1 this is Hinton's KD at T=1.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdexp.policy.envs import collect_states
from kdexp.policy.settings import StudentSettings

DAGGER_SEED = 700_000  # episode seeds of the student's rollouts, apart from every other use


def policy_kl_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    target = F.log_softmax(teacher_logits / temperature, dim=1)
    return F.kl_div(F.log_softmax(student_logits, dim=1), target, reduction="batchmean", log_target=True)


@torch.no_grad()
def agreement_metrics(student: nn.Module, teacher: nn.Module, states: Tensor) -> dict[str, float]:
    """Greedy-action agreement and KL(teacher || student) at T=1 on `states`."""
    student.eval()
    teacher.eval()
    s, t = student(states), teacher(states)
    return {"agreement": (s.argmax(1) == t.argmax(1)).float().mean().item(),
            "kl_teacher": policy_kl_loss(s, t, 1.0).item()}


def fit_student(student: nn.Module, teacher: nn.Module, states: Tensor, settings: StudentSettings, seed: int,
                heldout: Tensor, on_epoch: Callable[[dict[str, float], int], None] | None = None,
                epoch_offset: int = 0) -> int:
    """Train on (states, teacher logits) for settings.epochs; returns the next epoch number."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        teacher.eval()
        targets = teacher(states)
    opt = torch.optim.Adam(student.parameters(), lr=settings.lr)
    for epoch in range(epoch_offset, epoch_offset + settings.epochs):
        student.train()
        order = torch.randperm(len(states), generator=gen)
        total = 0.0
        for i in range(0, len(states), settings.batch_size):
            idx = order[i : i + settings.batch_size]
            loss = policy_kl_loss(student(states[idx]), targets[idx], settings.temperature)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        if on_epoch is not None:
            held = agreement_metrics(student, teacher, heldout)
            on_epoch({"train/kd": total / len(states), "heldout/agreement": held["agreement"],
                      "heldout/kl_teacher": held["kl_teacher"], "train/states": float(len(states))}, epoch)
    return epoch_offset + settings.epochs


def distill_policy(student: nn.Module, teacher: nn.Module, states: Tensor, env_id: str,
                   settings: StudentSettings, seed: int, heldout: Tensor, on_epoch=None) -> Tensor:
    """Distill, then `dagger_rounds` times add the states the greedy student visits (DAgger's aggregation,
    Ross et al. 2011), labelled by the teacher, and train again; returns all training states."""
    epoch = fit_student(student, teacher, states, settings, seed, heldout, on_epoch)
    for r in range(settings.dagger_rounds):
        episode_seed = DAGGER_SEED + 1000 * seed + 100 * r
        visited = collect_states(student, env_id, settings.dagger_states, episode_seed, sample=False)
        states = torch.cat([states, visited])
        epoch = fit_student(student, teacher, states, settings, seed + r + 1, heldout, on_epoch, epoch)
    return states
