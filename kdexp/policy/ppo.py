"""The teacher policy, trained by PPO (Schulman et al. 2017, clipped objective, GAE).

Chosen over DQN because it is the more reliable of the two on CartPole with fixed seeds and small
budgets. Training stops early once the greedy policy reaches `target_return` on a few check episodes
(seeded apart from the final evaluation), or when `max_steps` environment steps are spent.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from kdexp.policy.envs import env_dims, episode_returns, make_env, mean_std
from kdexp.policy.nets import ActorCritic
from kdexp.policy.settings import PPOSettings

log = logging.getLogger("kdexp")
CHECK_SEED = 900_000  # check episodes during training; final evaluations use variant.eval_seed


def train_ppo(env_id: str, hidden: list[int], settings: PPOSettings, seed: int,
              on_update: Callable[[dict[str, float], int], None] | None = None,
              critic_hidden: list[int] | None = None) -> tuple[ActorCritic, dict]:
    """Train an actor-critic; returns it and a summary (steps, updates, seconds, last check return).
    `critic_hidden`: the value net's widths when they differ from the policy's."""
    s = settings
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    obs_dim, num_actions = env_dims(env_id)
    model = ActorCritic(obs_dim, num_actions, hidden, critic_hidden)
    opt = torch.optim.Adam(model.parameters(), lr=s.lr, eps=1e-5)
    envs = [make_env(env_id) for _ in range(s.num_envs)]
    first = [e.reset(seed=seed * 1000 + i)[0] for i, e in enumerate(envs)]
    obs = torch.as_tensor(np.stack(first), dtype=torch.float32)
    episode_return = torch.zeros(s.num_envs)
    finished: list[float] = []
    steps = updates = 0
    check = float("nan")
    start = time.perf_counter()
    try:
        while steps < s.max_steps:
            batch, obs = rollout(model, envs, obs, episode_return, finished, s, gen)
            steps += s.num_envs * s.rollout
            lr = s.lr * max(0.0, 1 - steps / s.max_steps)  # linear decay, as in the PPO paper
            for group in opt.param_groups:
                group["lr"] = lr
            losses = update(model, opt, batch, s, gen)
            updates += 1
            recent = mean_std(finished[-20:])[0] if finished else 0.0
            metrics = {"train/episode_return": recent, "lr": lr, **losses}
            if updates % s.check_every == 0:
                returns = episode_returns(model.actor, env_id, s.check_episodes, CHECK_SEED + seed * 100)
                check = mean_std(returns)[0]
                metrics["train/check_return"] = check
            if on_update is not None:
                on_update(metrics, steps)
            if check >= s.target_return:
                break
    finally:
        for e in envs:
            e.close()
    seconds = time.perf_counter() - start
    log.info("PPO teacher: %d steps, %d updates, %.1fs, check return %.1f", steps, updates, seconds, check)
    return model, {"steps": steps, "updates": updates, "train_seconds": seconds, "check_return": check}


@torch.no_grad()
def rollout(model: ActorCritic, envs: list, obs: Tensor, episode_return: Tensor, finished: list[float],
            s: PPOSettings, gen: torch.Generator) -> tuple[dict[str, Tensor], Tensor]:
    n, t_max = s.num_envs, s.rollout
    states = torch.zeros(t_max, n, obs.shape[1])
    actions = torch.zeros(t_max, n, dtype=torch.long)
    logps, values, rewards, dones = (torch.zeros(t_max, n) for _ in range(4))
    for t in range(t_max):
        logits = model(obs)
        action = torch.multinomial(logits.softmax(1), 1, generator=gen).squeeze(1)
        states[t], actions[t], values[t] = obs, action, model.value(obs)
        logps[t] = logits.log_softmax(1).gather(1, action[:, None]).squeeze(1)
        next_obs = []
        for i, env in enumerate(envs):
            o, r, terminated, truncated, _ = env.step(int(action[i]))
            episode_return[i] += r
            if truncated and not terminated:  # a time limit is not a failure: bootstrap from the last state
                r += s.gamma * float(model.value(torch.as_tensor(o, dtype=torch.float32)[None]))
            rewards[t, i] = r
            if terminated or truncated:
                dones[t, i] = 1.0
                finished.append(float(episode_return[i]))
                episode_return[i] = 0.0
                o, _ = env.reset()
            next_obs.append(o)
        obs = torch.as_tensor(np.stack(next_obs), dtype=torch.float32)
    advantages = torch.zeros(t_max, n)
    last_value, gae = model.value(obs), torch.zeros(n)
    for t in reversed(range(t_max)):
        next_value = last_value if t == t_max - 1 else values[t + 1]
        not_done = 1.0 - dones[t]
        delta = rewards[t] + s.gamma * next_value * not_done - values[t]
        gae = delta + s.gamma * s.gae_lambda * not_done * gae
        advantages[t] = gae
    batch = {"states": states, "actions": actions, "logps": logps, "advantages": advantages,
             "returns": advantages + values}
    return {k: v.flatten(0, 1) for k, v in batch.items()}, obs


def update(model: ActorCritic, opt: torch.optim.Optimizer, batch: dict[str, Tensor], s: PPOSettings,
           gen: torch.Generator) -> dict[str, float]:
    total = len(batch["actions"])
    sums = {"train/policy_loss": 0.0, "train/value_loss": 0.0, "train/entropy": 0.0}
    count = 0
    for _ in range(s.update_epochs):
        order = torch.randperm(total, generator=gen)
        for i in range(0, total, s.minibatch):
            idx = order[i : i + s.minibatch]
            logits = model(batch["states"][idx])
            logp_all = logits.log_softmax(1)
            logp = logp_all.gather(1, batch["actions"][idx, None]).squeeze(1)
            adv = batch["advantages"][idx]
            adv = (adv - adv.mean()) / (adv.std() + 1e-8)
            ratio = (logp - batch["logps"][idx]).exp()
            policy_loss = -torch.min(ratio * adv, ratio.clamp(1 - s.clip, 1 + s.clip) * adv).mean()
            value_loss = F.mse_loss(model.value(batch["states"][idx]), batch["returns"][idx])
            entropy = -(logp_all.exp() * logp_all).sum(1).mean()
            loss = policy_loss + s.value_coef * value_loss - s.entropy * entropy
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), s.max_grad_norm)
            opt.step()
            for k, v in zip(sums, (policy_loss, value_loss, entropy)):
                sums[k] += float(v.detach())
            count += 1
    return {k: v / count for k, v in sums.items()}
