"""`kdexp-train variant=policy`: PPO teacher (cached) -> policy distillation -> episode returns.

Uses only the `variant` node (conf/variant/policy.yaml) plus `seed`, `eval`, `paths` and `tracking`;
the image groups (data, teacher, student, distill, recipe, trainer, finetune, baseline) are still
composed and validated with their defaults but ignored: they appear neither in the runs' params nor tags.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path
from typing import Mapping

import torch

from kdexp.caching.fingerprint import fingerprint
from kdexp.measure.latency import time_models
from kdexp.measure.metrics import cost_metrics, ratios
from kdexp.policy.distill import agreement_metrics, distill_policy
from kdexp.policy.envs import collect_states, env_dims, episode_returns, mean_std
from kdexp.policy.nets import ActorCritic, PolicyMLP
from kdexp.policy.ppo import train_ppo
from kdexp.policy.settings import PPOSettings, StudentSettings
from kdexp.tracking.runs import flatten
from kdexp.tracking.summary import latency_lines
from kdexp.training.evaluation import latency_flags, latency_tags
from kdexp.training.lifecycle import tracked_run
from kdexp.training.run import RunIdentity, cached_model, log_config, open_run, write_summary
from kdexp.variants import register_variant

log = logging.getLogger("kdexp")
TEACHER_FORMAT = 1  # bump when PPO or the nets change what a cached teacher means
COLLECT_SEED, HELDOUT_SEED = 500_000, 600_000  # episode seeds apart from PPO's, the checks' and eval_seed


def arch_name(hidden: list[int]) -> str:
    return "policy_mlp_" + "x".join(map(str, hidden))


@register_variant("policy")
def run(conf: Mapping, run_dir: Path, cell: str = "") -> dict[str, float]:
    v = conf["variant"]
    ppo, student_settings = PPOSettings(**v["ppo"]), StudentSettings(**v["student"])  # typed: config.variants
    env_id, seed = v["env"], conf["seed"]
    obs_dim, num_actions = env_dims(env_id)
    identity = open_run(conf, run_dir, cell=cell)
    teacher, teacher_meta = policy_teacher(identity, ppo, obs_dim, num_actions)

    tags = {"kdexp.role": "student", "kdexp.variant": "policy", "kdexp.method": "policy", "kdexp.cell": cell,
            "env": env_id, "data": env_id, "teacher": arch_name(v["teacher_hidden"]),
            "student": arch_name(v["student_hidden"]),
            "distill": "policy_kl", "seed": str(seed), "kdexp.teacher_run_id": teacher_meta.get("run_id") or "",
            "kdexp.teacher_fingerprint": teacher_meta["key"]}
    params = flatten({"variant": v, "seed": seed, "eval": conf["eval"]})
    name = f"policy:{tags['teacher']}->{tags['student']}"
    with tracked_run(identity, name, tags, params, trial=True) as run_id:
        log_config(identity, run_id, {"variant": v, "seed": seed})
        torch.manual_seed(seed)
        student = PolicyMLP(obs_dim, num_actions, v["student_hidden"])
        sample = v["collect"] == "sample"
        states = collect_states(teacher.actor, env_id, v["states"], COLLECT_SEED + 1000 * seed, sample)
        heldout = collect_states(teacher.actor, env_id, v["heldout_states"], HELDOUT_SEED + 1000 * seed, sample)
        states = distill_policy(student, teacher.actor, states, env_id, student_settings, seed, heldout,
                                identity.tracker.sink(run_id))
        metrics = policy_metrics(conf, teacher, student, heldout)
        metrics["student/train_states"] = len(states)
        identity.tracker.log_metrics(run_id, metrics)
        identity.tracker.set_tags(run_id, latency_tags(metrics))
        write_summary(identity, run_id, metrics, summary(metrics, conf), student)
    return metrics


def policy_teacher(identity: RunIdentity, ppo: PPOSettings, obs_dim: int, num_actions: int
                   ) -> tuple[ActorCritic, dict]:
    """The PPO teacher from the model cache, trained (as its own MLflow run) on a miss."""
    v = identity.conf["variant"]
    spec = {"role": "policy-teacher", "format": TEACHER_FORMAT, "algorithm": "ppo", "env": v["env"],
            "hidden": v["teacher_hidden"], "ppo": asdict(ppo), "seed": v["teacher_seed"]}
    key = fingerprint(spec)

    def train() -> tuple[ActorCritic, dict]:
        tags = {"kdexp.role": "teacher", "kdexp.variant": "policy", "env": v["env"], "data": v["env"],
                "arch": arch_name(v["teacher_hidden"]), "seed": str(v["teacher_seed"]), "kdexp.fingerprint": key}
        with tracked_run(identity, f"teacher:{tags['arch']}", tags, flatten(spec)) as run_id:
            log.info("training policy teacher %s on %s (cache key %s)", tags["arch"], v["env"], key)
            sink = identity.tracker.sink(run_id)
            model, info = train_ppo(v["env"], v["teacher_hidden"], ppo, v["teacher_seed"], sink)
            identity.tracker.log_metrics(run_id, {f"teacher/{k}": float(x) for k, x in info.items()})
        return model, {"run_id": run_id, "spec": spec, "train": info}

    return cached_model(identity, key, train, lambda: ActorCritic(obs_dim, num_actions, v["teacher_hidden"]),
                        "policy teacher")


def policy_metrics(conf: dict, teacher: ActorCritic, student: PolicyMLP, heldout: torch.Tensor) -> dict:
    """Greedy returns of both on the same fresh seeded episodes, agreement/KL on held-out states, costs
    (latency: both actors timed in the same blocks, kdexp.measure.latency)."""
    v, ev = conf["variant"], conf["eval"]
    out: dict[str, float] = {}
    costs, actors, shape = {}, {"teacher": teacher.actor, "student": student}, tuple(heldout.shape[1:])
    for role, actor in actors.items():
        mean, std = mean_std(episode_returns(actor, v["env"], v["eval_episodes"], v["eval_seed"]))
        costs[role] = {"test_return_mean": mean, **cost_metrics(actor, shape)}
        out.update({f"{role}/{k}": float(x) for k, x in costs[role].items()})
        out[f"{role}/test_return_std"] = std
    out.update({f"student/{k}": x for k, x in agreement_metrics(student, teacher.actor, heldout).items()})
    out.update({f"student/{k}": x for k, x in ratios(costs["student"], costs["teacher"]).items()})
    timed = time_models(actors, shape, (1, ev["latency_batch"]), ev["latency_repeats"], "teacher")
    for role in actors:
        out.update(timed.metrics(role, f"{role}/"))
    out.update({"latency/threads": float(timed.threads), "latency/blocks": float(timed.blocks)})
    out.update(latency_flags(out))
    return out


def summary(m: dict, conf: dict) -> str:
    v = conf["variant"]
    lines = ["| policy | return (mean ± std) | agree w/ T | KL(T‖S) | params | lat b1 ms |",
             "|---|---|---|---|---|---|"]
    for role, hidden in (("teacher", v["teacher_hidden"]), ("student", v["student_hidden"])):
        agree = f"{100 * m['student/agreement']:.2f}" if role == "student" else "–"
        kl = f"{m['student/kl_teacher']:.4f}" if role == "student" else "–"
        lines.append(f"| {role} {arch_name(hidden)} | {m[f'{role}/test_return_mean']:.1f} ± "
                     f"{m[f'{role}/test_return_std']:.1f} | {agree} | {kl} | {m[f'{role}/params']:.0f} | "
                     f"{m[f'{role}/latency_b1_ms']:.3f} |")
    caption = (f"env={v['env']} seed={conf['seed']} T={v['student']['temperature']} "
               f"dagger_rounds={v['student']['dagger_rounds']}; greedy returns on {v['eval_episodes']} episodes "
               f"seeded from {v['eval_seed']}; agreement/KL on {v['heldout_states']} held-out teacher states")
    return "\n".join([*lines, "", caption, *latency_lines(m, conf["eval"]["latency_batch"])])
