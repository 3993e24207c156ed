"""Gymnasium environments: seeded episodes, greedy evaluation, and state collection.

Every episode is reset with an explicit seed, so the same seeds replay the same episodes and
teacher and student are compared on identical starting states.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable

import torch
from torch import Tensor, nn

# Tasks kdexp has measured, with what their PPO teacher needs (target_return: the early stop of the greedy
# check) and the student width at which size matters (docs/policy_distillation.md). Any other gymnasium id
# with a flat observation and discrete actions works with explicit settings.
ENV_DEFAULTS: dict[str, dict] = {
    # 500 is the cap; every student from 4 units up reaches it, so CartPole cannot show what KD adds
    "CartPole-v1": {"ppo": {"target_return": 490.0}, "student_hidden": [16]},
    # -500 = never swung up in 500 steps; a good policy needs about 70-90 steps (return -70..-90)
    # (checks are 500-step episodes while the policy is bad: few and rare, or they cost as much as training)
    "Acrobot-v1": {"ppo": {"target_return": -80.0, "max_steps": 80_000, "check_every": 10, "check_episodes": 5,
                           "lr": 1e-3, "entropy": 0.01},
                   "student_hidden": [2]},
}


def make_env(env_id: str):
    try:
        import gymnasium as gym
    except ImportError as exc:  # an optional dependency: the image pipeline does not need it
        raise ImportError("variant=policy needs gymnasium: pip install 'kdexp[rl]'") from exc
    return gym.make(env_id)


def env_dims(env_id: str) -> tuple[int, int]:
    """(observation size, number of discrete actions)."""
    env = make_env(env_id)
    try:
        if not hasattr(env.action_space, "n") or len(env.observation_space.shape) != 1:
            raise ValueError(f"variant.env={env_id!r}: policy distillation needs a flat observation and "
                             "discrete actions")
        return int(env.observation_space.shape[0]), int(env.action_space.n)
    finally:
        env.close()


@torch.no_grad()
def greedy_action(policy: nn.Module, obs) -> int:
    return int(policy(torch.as_tensor(obs, dtype=torch.float32)[None]).argmax(1))


def run_episodes(env_id: str, seeds: list[int], act: Callable[[object], int],
                 on_step: Callable[[object], None] | None = None) -> list[float]:
    """One episode per seed with `act(obs) -> action`; `on_step(obs)` sees every visited state."""
    env = make_env(env_id)
    returns = []
    try:
        for seed in seeds:
            obs, _ = env.reset(seed=seed)
            total, done = 0.0, False
            while not done:
                if on_step is not None:
                    on_step(obs)
                obs, reward, terminated, truncated, _ = env.step(act(obs))
                total += float(reward)
                done = terminated or truncated
            returns.append(total)
    finally:
        env.close()
    return returns


def episode_returns(policy: nn.Module, env_id: str, episodes: int, seed: int) -> list[float]:
    """Greedy (argmax) returns on `episodes` fresh episodes seeded seed, seed+1, ..."""
    policy.eval()
    return run_episodes(env_id, list(range(seed, seed + episodes)), lambda obs: greedy_action(policy, obs))


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.pstdev(values) if len(values) > 1 else 0.0


@torch.no_grad()
def collect_states(actor: nn.Module, env_id: str, num_states: int, seed: int, sample: bool) -> Tensor:
    """At least `num_states` states visited by `actor` (sampling from its softmax, or greedy), whole episodes.

    Sampling visits more of the state space than the greedy policy does, which the student needs to
    recover from its own mistakes; the random draws come from a generator seeded with `seed`.
    """
    actor.eval()
    gen = torch.Generator().manual_seed(seed)
    states: list[Tensor] = []

    def act(obs) -> int:
        logits = actor(torch.as_tensor(obs, dtype=torch.float32)[None])[0]
        if not sample:
            return int(logits.argmax())
        return int(torch.multinomial(logits.softmax(0), 1, generator=gen))

    episode = seed
    while len(states) < num_states:
        run_episodes(env_id, [episode], act, lambda o: states.append(torch.as_tensor(o, dtype=torch.float32)))
        episode += 1
    return torch.stack(states[:num_states])
