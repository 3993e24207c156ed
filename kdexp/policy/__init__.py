"""Policy distillation (Rusu et al. 2016) on gymnasium control tasks: `kdexp-train variant=policy`.

ppo.py trains the teacher, distill.py distils it into a smaller policy, settings.py holds their settings
(torch-free: the config schema types variant.ppo and variant.student with them), envs.py runs seeded episodes,
run.py is the variant (teacher cache, MLflow runs, metrics). Needs the `rl` extra (gymnasium).
"""
