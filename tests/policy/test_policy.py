"""Policy distillation: the loss, seeded episodes, the PPO teacher, distillation and its settings."""

from __future__ import annotations

import math
from dataclasses import asdict

import pytest
import torch

pytest.importorskip("gymnasium")

from kdexp.config.errors import ConfigError  # noqa: E402
from kdexp.policy.distill import agreement_metrics, distill_policy, policy_kl_loss  # noqa: E402
from kdexp.policy.envs import collect_states, episode_returns, mean_std  # noqa: E402
from kdexp.policy.nets import ActorCritic, PolicyMLP  # noqa: E402
from kdexp.policy.ppo import train_ppo  # noqa: E402
from kdexp.policy.settings import PPOSettings, StudentSettings  # noqa: E402

ENV = "CartPole-v1"


def softmax(values: list[float]) -> list[float]:
    exps = [math.exp(v) for v in values]
    return [e / sum(exps) for e in exps]


def test_policy_kl_loss_is_rusu_et_al_formula():
    s = torch.tensor([[1.0, -0.5], [0.2, 0.3], [2.0, 0.0]])
    t = torch.tensor([[3.0, 1.0], [0.0, 0.4], [-1.0, 1.0]])
    for T in (1.0, 0.1):
        expected = 0.0
        for si, ti in zip(s.tolist(), t.tolist()):
            p = softmax([v / T for v in ti])  # only the teacher is tempered
            q = softmax(si)
            expected += sum(a * math.log(a / b) for a, b in zip(p, q))
        assert policy_kl_loss(s, t, T).item() == pytest.approx(expected / len(s), rel=1e-5)
    assert policy_kl_loss(t, t, 1.0).item() == pytest.approx(0.0, abs=1e-6)


def random_policy(seed: int, hidden=(8,)) -> PolicyMLP:
    torch.manual_seed(seed)
    policy = PolicyMLP(4, 2, list(hidden))
    with torch.no_grad():  # a policy that is not uniform, so that episodes vary with it
        policy.net[-1].weight.mul_(300)
    return policy


def test_same_seeds_give_the_same_returns_and_other_seeds_other_episodes():
    policy = random_policy(0)
    first = episode_returns(policy, ENV, 5, seed=100)
    assert first == episode_returns(policy, ENV, 5, seed=100)
    assert first != episode_returns(policy, ENV, 5, seed=200)
    assert mean_std([1.0, 3.0]) == (2.0, 1.0)


def test_collect_states_is_seeded_and_sized():
    policy = random_policy(1)
    a = collect_states(policy, ENV, 300, seed=7, sample=True)
    assert a.shape == (300, 4) and torch.equal(a, collect_states(policy, ENV, 300, seed=7, sample=True))
    assert not torch.equal(a, collect_states(policy, ENV, 300, seed=8, sample=True))


def distilled(seed: int, teacher: torch.nn.Module, states: torch.Tensor, heldout: torch.Tensor, **kw):
    torch.manual_seed(seed)
    student = PolicyMLP(4, 2, [8])
    logged = []
    out_states = distill_policy(student, teacher, states, ENV, StudentSettings(epochs=3, batch_size=64, **kw), seed,
                                heldout, lambda m, e: logged.append((e, m)))
    return student, out_states, logged


def test_student_distillation_and_its_returns_are_reproducible():
    teacher = random_policy(2, hidden=(16,))
    states = collect_states(teacher, ENV, 400, seed=1, sample=True)
    heldout = collect_states(teacher, ENV, 200, seed=2, sample=True)
    a, _, logged = distilled(0, teacher, states, heldout)
    b, _, _ = distilled(0, teacher, states, heldout)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert episode_returns(a, ENV, 4, seed=10_000) == episode_returns(b, ENV, 4, seed=10_000)
    assert [e for e, _ in logged] == [0, 1, 2]
    assert logged[-1][1]["train/kd"] < logged[0][1]["train/kd"]  # it learns
    metrics = agreement_metrics(a, teacher, heldout)
    assert 0 <= metrics["agreement"] <= 1 and metrics["kl_teacher"] >= 0


def test_dagger_rounds_add_the_students_states():
    teacher = random_policy(3)
    states = collect_states(teacher, ENV, 200, seed=1, sample=True)
    _, all_states, logged = distilled(0, teacher, states, states, dagger_rounds=2, dagger_states=50)
    assert len(all_states) == 300 and torch.equal(all_states[:200], states)
    assert [e for e, _ in logged] == list(range(9))  # epochs continue across rounds


def test_bad_policy_settings_are_config_errors():
    from omegaconf import OmegaConf

    from kdexp.config.parse import parse_config
    from tests.conftest import compose_train

    good = OmegaConf.to_container(compose_train(["variant=policy"]), resolve=True)
    parse_config(good)
    for key, value, message in (("student_hidden", 4, "variant.student_hidden=4"),
                                ("student_hidden", [4, 0], r"variant.student_hidden\[1\]=0"),
                                ("collect", "random", "variant.collect='random'"), ("states", 0, "variant.states=0"),
                                ("ppo", {"learning_rate": 1.0}, r"variant.ppo: unknown keys \['learning_rate'\]"),
                                ("student", {"temperature": 0}, "variant.student.temperature=0")):
        with pytest.raises(ConfigError, match=message):
            parse_config({**good, "variant": {**good["variant"], key: value}})
    # the YAML sets no PPO or student value: the settings dataclasses' defaults are the only ones
    assert good["variant"]["ppo"] == asdict(PPOSettings()) and good["variant"]["student"] == asdict(StudentSettings())


@pytest.mark.slow
def test_ppo_teacher_reaches_a_high_return_within_a_small_budget():
    teacher, info = train_ppo(ENV, [64, 64], PPOSettings(), seed=0)
    assert isinstance(teacher, ActorCritic) and info["steps"] <= PPOSettings().max_steps
    mean, _ = mean_std(episode_returns(teacher.actor, ENV, 20, seed=10_000))
    assert mean >= 400
