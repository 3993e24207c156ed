"""Small MLP policies: the teacher is an actor-critic (the actor's logits are what is distilled),
the student is an actor alone."""

from __future__ import annotations

import itertools

from torch import Tensor, nn


def mlp(sizes: list[int], out_gain: float = 1.0) -> nn.Sequential:
    """Linear-Tanh layers; orthogonal init (the usual choice for small policy-gradient nets)."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        linear = nn.Linear(a, b)
        last = i == len(sizes) - 2
        nn.init.orthogonal_(linear.weight, out_gain if last else 2**0.5)
        nn.init.zeros_(linear.bias)
        layers += [linear] if last else [linear, nn.Tanh()]
    return nn.Sequential(*layers)


class PolicyMLP(nn.Module):
    """observation -> action logits."""

    def __init__(self, obs_dim: int, num_actions: int, hidden: list[int]):
        super().__init__()
        self.net = mlp([obs_dim, *hidden, num_actions], out_gain=0.01)  # near-uniform start

    def forward(self, obs: Tensor) -> Tensor:
        return self.net(obs)


class ActorCritic(nn.Module):
    """A policy and a separate value network, of the same width unless `critic_hidden` says otherwise
    (a small policy trained alone keeps a full-size critic: only the actor is deployed)."""

    def __init__(self, obs_dim: int, num_actions: int, hidden: list[int], critic_hidden: list[int] | None = None):
        super().__init__()
        self.actor = PolicyMLP(obs_dim, num_actions, hidden)
        self.critic = mlp([obs_dim, *(critic_hidden or hidden), 1], out_gain=1.0)

    def forward(self, obs: Tensor) -> Tensor:
        return self.actor(obs)

    def value(self, obs: Tensor) -> Tensor:
        return self.critic(obs).squeeze(-1)
