"""Policy distillation where size matters: the teacher, a small policy trained alone, and the same small
policy distilled from the teacher, on the same seeded evaluation episodes, over several seeds.

    python -m kdexp.policy.compare --env Acrobot-v1 --seeds 0 1 2

"Alone" is PPO with the teacher's budget (same PPOSettings, same early stop) and a critic of the teacher's
width: only the actor is deployed, so only the actor is small. "Distilled" is kdexp.policy.distill on
states the teacher visits (as `variant=policy` does). Standalone on purpose: no MLflow, no cache, so a
table is one command and a few minutes of CPU (docs/policy_distillation.md).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import asdict, replace

import torch

from kdexp.policy.distill import distill_policy
from kdexp.policy.envs import ENV_DEFAULTS, collect_states, env_dims, episode_returns
from kdexp.policy.nets import PolicyMLP
from kdexp.policy.ppo import train_ppo
from kdexp.policy.settings import PPOSettings, StudentSettings

COLLECT_SEED = 500_000  # as kdexp.policy.run: episode seeds apart from PPO's checks and the evaluation
ROLES = ("teacher", "alone", "distilled")


def compare_seed(env_id: str, teacher, teacher_hidden: list[int], student_hidden: list[int], ppo: PPOSettings,
                 student: StudentSettings, seed: int, states: int, eval_episodes: int,
                 eval_seed: int) -> dict[str, float]:
    """Mean greedy return of each role for one student seed (alone and distilled both seeded `seed`)."""
    obs_dim, num_actions = env_dims(env_id)
    start = time.perf_counter()
    alone, alone_info = train_ppo(env_id, student_hidden, ppo, seed, critic_hidden=teacher_hidden)
    torch.manual_seed(seed)
    distilled = PolicyMLP(obs_dim, num_actions, student_hidden)
    visited = collect_states(teacher.actor, env_id, states, COLLECT_SEED + 1000 * seed, sample=True)
    distill_policy(distilled, teacher.actor, visited, env_id, student, seed, visited[:256])
    out = {"seed": seed, "alone_steps": alone_info["steps"]}
    for role, actor in zip(ROLES, (teacher.actor, alone.actor, distilled)):
        out[role] = statistics.fmean(episode_returns(actor, env_id, eval_episodes, eval_seed))
    out["seconds"] = time.perf_counter() - start
    return out


def summarize(rows: list[dict]) -> dict[str, tuple[float, float]]:
    """role -> (mean, sample std) over seeds of the per-seed mean returns."""
    out = {}
    for role in ROLES:
        values = [r[role] for r in rows]
        out[role] = (statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0)
    return out


def markdown(rows: list[dict], env_id: str, teacher_hidden: list[int], student_hidden: list[int],
             eval_episodes: int) -> str:
    def params(hidden: list[int]) -> int:
        obs_dim, num_actions = env_dims(env_id)
        return sum(p.numel() for p in PolicyMLP(obs_dim, num_actions, hidden).parameters())

    stats = summarize(rows)
    labels = {"teacher": f"teacher {teacher_hidden} (PPO)", "alone": f"student {student_hidden} alone (PPO)",
              "distilled": f"student {student_hidden} distilled"}
    lines = ["| policy | params | return, mean ± std over seeds | per seed |", "|---|---|---|---|"]
    for role in ROLES:
        mean, std = stats[role]
        hidden = teacher_hidden if role == "teacher" else student_hidden
        per_seed = ", ".join(f"{r[role]:.1f}" for r in rows)
        lines.append(f"| {labels[role]} | {params(hidden)} | {mean:.1f} ± {std:.1f} | {per_seed} |")
    lines.append("")
    lines.append(f"{env_id}: greedy returns, each seed's mean over {eval_episodes} episodes (the same seeded "
                 f"episodes for all three); {len(rows)} student seeds, one teacher (its row repeats it).")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m kdexp.policy.compare", description=__doc__.split("\n\n")[0])
    p.add_argument("--env", default="Acrobot-v1", choices=sorted(ENV_DEFAULTS))
    p.add_argument("--teacher-hidden", type=int, nargs="*", default=[64, 64])
    p.add_argument("--student-hidden", type=int, nargs="*", default=None,
                   help="the student's widths (default: the env's, see kdexp.policy.envs.ENV_DEFAULTS)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="student seeds")
    p.add_argument("--teacher-seed", type=int, default=0, help="one teacher for every seed, as the matrices")
    p.add_argument("--max-steps", type=int, default=None, help="PPO budget of teacher and alone student")
    p.add_argument("--states", type=int, default=10000, help="teacher-visited states for the distilled student")
    p.add_argument("--eval-episodes", type=int, default=20)
    p.add_argument("--eval-seed", type=int, default=10000)
    p.add_argument("--json", help="also write the per-seed rows here")
    args = p.parse_args(argv)
    import logging

    logging.basicConfig(level=logging.INFO, format="%(message)s")  # PPO's one line per training: steps, return
    defaults = ENV_DEFAULTS[args.env]
    ppo = replace(PPOSettings(), **defaults["ppo"])
    if args.max_steps:
        ppo = replace(ppo, max_steps=args.max_steps)
    student_hidden = defaults["student_hidden"] if args.student_hidden is None else args.student_hidden
    student = StudentSettings(**defaults.get("student", {}))
    start = time.perf_counter()
    teacher, info = train_ppo(args.env, args.teacher_hidden, ppo, args.teacher_seed)
    print(json.dumps({"teacher_steps": info["steps"], "seconds": time.perf_counter() - start}), flush=True)
    rows = []
    for seed in args.seeds:
        rows.append(compare_seed(args.env, teacher, args.teacher_hidden, student_hidden, ppo, student, seed,
                                 args.states, args.eval_episodes, args.eval_seed))
        print(json.dumps(rows[-1]), flush=True)
    print(markdown(rows, args.env, args.teacher_hidden, student_hidden, args.eval_episodes))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": rows, "ppo": asdict(ppo), "student": asdict(student)}, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
