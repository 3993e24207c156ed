"""Policy distillation where size matters: the Acrobot config, the small actor with a full-size critic, and the
teacher / alone / distilled comparison (kdexp.policy.compare) on a tiny budget."""

from __future__ import annotations

import pytest

pytest.importorskip("gymnasium")

from omegaconf import OmegaConf

from kdexp.policy.compare import ROLES, compare_seed, markdown, summarize
from kdexp.policy.envs import ENV_DEFAULTS
from kdexp.policy.nets import ActorCritic
from kdexp.policy.ppo import train_ppo
from kdexp.policy.settings import PPOSettings, StudentSettings
from tests.conftest import compose_train


def test_acrobot_variant_config_matches_the_measured_defaults():
    v = OmegaConf.to_container(compose_train(["variant=policy_acrobot"]), resolve=True)["variant"]
    assert (v["name"], v["env"], v["student_hidden"]) == ("policy", "Acrobot-v1", [2])
    assert {k: v["ppo"][k] for k in ENV_DEFAULTS["Acrobot-v1"]["ppo"]} == ENV_DEFAULTS["Acrobot-v1"]["ppo"]


def test_a_small_actor_can_keep_a_full_size_critic():
    model = ActorCritic(6, 3, [2], critic_hidden=[64, 64])
    assert model.actor.net[0].out_features == 2 and model.critic[0].out_features == 64
    assert sum(p.numel() for p in model.actor.parameters()) == 6 * 2 + 2 + 2 * 3 + 3


def test_summary_is_mean_and_sample_std_over_seeds():
    rows = [{"teacher": -80.0, "alone": -500.0, "distilled": -100.0},
            {"teacher": -80.0, "alone": -300.0, "distilled": -90.0}]
    stats = summarize(rows)
    assert stats["alone"] == (-400.0, pytest.approx(141.42, rel=1e-4)) and stats["teacher"] == (-80.0, 0.0)


@pytest.mark.slow
def test_compare_runs_all_three_on_the_same_episodes():
    ppo = PPOSettings(num_envs=2, rollout=64, max_steps=512, check_every=100, target_return=1e9)
    teacher, _ = train_ppo("CartPole-v1", [8], ppo, 0)
    row = compare_seed("CartPole-v1", teacher, [8], [2], ppo, StudentSettings(epochs=1), seed=0, states=200,
                       eval_episodes=2, eval_seed=10_000)
    assert set(ROLES) <= set(row) and all(row[r] >= 8 for r in ROLES)  # CartPole gives >= 8 steps of reward
    table = markdown([row], "CartPole-v1", [8], [2], 2)
    assert "| student [2] distilled |" in table and "| teacher [8] (PPO) |" in table
