"""The settings of policy distillation: `variant.ppo` (the PPO teacher) and `variant.student` (distillation).

Plain dataclasses without torch, so that the config schema (kdexp/config/variants.py) types these nodes with
them and Hydra rejects a wrong type while composing; their defaults are the only ones (conf/variant/policy.yaml
sets none of these keys). Frozen is left out on purpose: OmegaConf makes a frozen dataclass read-only.
"""

from __future__ import annotations

from dataclasses import dataclass

from kdexp.config.rules import checked


@dataclass
class PPOSettings:
    """The teacher's PPO (kdexp/policy/ppo.py); all of it is part of the teacher's cache key."""

    num_envs: int = checked(8, ge=1)
    rollout: int = checked(128, ge=1)          # steps per env per update
    update_epochs: int = checked(4, ge=1)
    minibatch: int = checked(256, ge=1)
    lr: float = checked(2.5e-3, gt=0)
    gamma: float = 0.99
    gae_lambda: float = 0.95
    clip: float = 0.2
    entropy: float = 0.0
    value_coef: float = 0.5
    max_grad_norm: float = 0.5
    max_steps: int = checked(200_000, ge=1)    # budget; training stops earlier once the greedy policy reaches
    target_return: float = 490.0               #   target_return on check_episodes (seeded apart from evaluation)
    check_every: int = checked(5, ge=1)        # updates between greedy check episodes
    check_episodes: int = checked(10, ge=1)


@dataclass
class StudentSettings:
    """The student's distillation (kdexp/policy/distill.py)."""

    epochs: int = checked(20, ge=1)
    batch_size: int = checked(256, ge=1)
    lr: float = checked(3e-3, gt=0)
    temperature: float = checked(1.0, gt=0)   # teacher-only temperature; < 1 sharpens towards its greedy action
    dagger_rounds: int = checked(0, ge=0)     # extra rounds on states the student visits, labelled by the teacher
    dagger_states: int = checked(2000, ge=1)  # states collected per round
