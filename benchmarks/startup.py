"""Start-up: seconds from the `kdexp-train` command to the first training step, and where they go.

loop_overhead.py runs this file as a script, `python benchmarks/startup.py STAMPS OVERRIDE...`: it is
kdexp-train's entry point plus wall-clock stamps at each milestone (the parent stamps the launch).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

MILESTONES = (
    "import kdexp.cli (torch, hydra)", "import kdexp.variants.standard (lightning, torchmetrics)",
    "hydra: compose + plugins",
    "data + MLflow store", "teacher (cache) + its test evaluation", "baseline (cache) + its evaluation",
    "first student step", "end of trial",
)


def _child(stamps: Path, overrides: list[str]) -> None:
    def stamp(name: str) -> None:
        with open(stamps, "a") as f:
            f.write(json.dumps([name, time.time()]) + "\n")

    import kdexp.cli

    stamp(MILESTONES[0])
    import kdexp.training.alone as alone
    import kdexp.training.distilled as distilled
    import kdexp.variants as experiments
    import kdexp.variants.standard as standard
    from kdexp.modules.distill import DistillModule

    stamp(MILESTONES[1])

    def after(fn, name):
        def wrapped(*args, **kwargs):
            out = fn(*args, **kwargs)
            stamp(name)
            return out
        return wrapped

    run = experiments.run_experiment
    experiments.run_experiment = lambda *a, **k: (stamp(MILESTONES[2]), run(*a, **k))[1]
    standard.make_context = after(standard.make_context, MILESTONES[3])
    distilled.resolve_teacher = after(distilled.resolve_teacher, MILESTONES[4])  # called from there
    alone.evaluate = after(alone.evaluate, "evaluate")
    hook = DistillModule.on_train_batch_start

    def first_step(self, batch, batch_idx):
        if self.teacher is not None and self.stage == "distill" and self.global_step == 0:
            stamp(MILESTONES[6])
        return hook(self, batch, batch_idx)

    DistillModule.on_train_batch_start = first_step
    sys.argv = ["kdexp-train", *overrides]
    try:
        kdexp.cli.train()
    finally:
        stamp(MILESTONES[7])


def run_once(overrides: list[str], cwd: Path, stamps: Path) -> dict[str, float]:
    """Seconds from launch to each milestone of one kdexp-train run."""
    stamps.unlink(missing_ok=True)
    env = {**os.environ, "KDEXP_OFFLINE": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    launch = time.time()
    proc = subprocess.run([sys.executable, __file__, str(stamps), *overrides], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        raise RuntimeError(f"kdexp-train {' '.join(overrides)} failed:\n{proc.stderr[-3000:]}")
    seen: dict[str, float] = {}
    evaluations = 0
    for line in stamps.read_text().splitlines():
        name, t = json.loads(line)
        if name == "evaluate":  # the 2nd evaluate of a run with baseline=true ends the baseline's
            evaluations += 1
            if evaluations == 2:
                seen[MILESTONES[5]] = t - launch
            continue
        seen.setdefault(name, t - launch)
    return seen


def import_seconds(module: str, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", f"import {module}"], check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure_startup(work: Path, overrides: list[str], repeats: int) -> dict:
    """A warm-up run fills the caches (teacher, baseline, teacher outputs); then `repeats` trials of a
    sweep over distill.temperature, each a fresh process as with Hydra's launchers, are stamped."""
    work.mkdir(parents=True, exist_ok=True)
    base = [*overrides, f"paths.root={work / 'outputs'}"]
    run_once([*base, "distill.temperature=4"], work, work / "stamps.jsonl")
    runs = [run_once([*base, f"distill.temperature={1.5 + r}"], work, work / "stamps.jsonl") for r in range(repeats)]
    milestones = {m: statistics.median(r[m] for r in runs) for m in MILESTONES if all(m in r for r in runs)}
    first, total = milestones["first student step"], milestones["end of trial"]
    # after the imports, in a fresh process; an in-process sweep's later trials pay less (memoized data files,
    # evaluations and costs: sweep_pruning.py --compare teacher-cache measures them)
    after_imports = first - milestones[MILESTONES[1]]
    return {
        "overrides": overrides, "milestones_s": milestones, "runs": runs,
        "to_first_step_s": first, "trial_s": total, "startup_fraction_of_trial": first / total,
        "setup_after_imports_s": after_imports,
        "imports_s": {m: import_seconds(m, repeats) for m in ("torch", "lightning", "mlflow.tracking", "kdexp.cli")},
    }


if __name__ == "__main__":
    _child(Path(sys.argv[1]), sys.argv[2:])
