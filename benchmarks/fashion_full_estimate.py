"""Wall-time estimate of sweeps/matrix/fashion_full.yaml on this machine, from step times measured here.

Measures, on one thread, a batch-128 training step of every (student, method) of the plan as the pipeline
runs it (DistillModule with the method built for the pair at the matrix's settings, teacher outputs looked
up from the cache: every method of the plan fits teacher_cache.max_gb since the cache keeps only the levels
a method reads), the AB init stage's step, CRD with its 54k-entry memory banks; and the teacher's training
step on every thread. Reads the plan (pairs, methods, seeds, epochs, tuning budget and study repeats, matched
budgets) from the matrix file.
The plan runs two 1-thread processes after the teacher (docs/fashion_full_benchmark.md).
Compare with benchmarks/matrix_time.py after a run.
    python benchmarks/fashion_full_estimate.py
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `benchmarks` and `kdexp` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from benchmarks.common import median_ms
from kdexp.caching.teacher_outputs import compute_outputs, wanted_outputs
from kdexp.distill import METHODS, method_from_config
from kdexp.models import create_model
from kdexp.modules.distill import DistillModule

REPO = Path(__file__).resolve().parents[1]
MATRIX = REPO / "sweeps" / "matrix" / "fashion_full.yaml"
TRAIN, VAL, BATCH, SHAPE = 54_000, 6_000, 128, (1, 28, 28)
CELL_OVERHEAD_S, TRIAL_OVERHEAD_S = 8.0, 4.0  # start-up, test pass, records (+ ONNX export for cells)


def teacher_step_ms(arch: str, threads: int, repeats: int = 30) -> float:
    """The teacher's own training step (cross-entropy, Adam) on `threads` threads."""
    torch.set_num_threads(threads)
    model = create_model(arch, num_classes=10, in_channels=1).train()
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    x, y = torch.randn(BATCH, *SHAPE), torch.randint(0, 10, (BATCH,))

    def step():
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()

    return median_ms(step, repeats, warmup=5)


def method_step_ms(teacher, student_arch: str, distill: dict, stage: str = "distill", repeats: int = 20) -> float:
    """One training step of `student_arch` with the method of `distill` as the pipeline runs it, on one thread,
    the teacher's outputs looked up as from the cache (the plan's methods all fit teacher_cache.max_gb)."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    student = create_model(student_arch, num_classes=10, in_channels=1)
    method = method_from_config(distill)
    method.build(student.feature_shapes(SHAPE), teacher.feature_shapes(SHAPE), 10, TRAIN)  # CRD: 54k banks
    weights = {k: float(v) for k, v in distill["weights"].items()}
    weights.update({t: weights.get(t) or 1.0 for t in method.terms})  # a tuned weight is never 0
    module = DistillModule(student, teacher=teacher, method=method, weights=weights, temperature=4.0, stage=stage)
    x, y, index = torch.randn(BATCH, *SHAPE), torch.randint(0, 10, (BATCH,)), torch.arange(BATCH)
    if module.uses_teacher:
        levels = method.teacher_levels()
        outputs = wanted_outputs(method.needs, module.needs_features, levels)
        module.use_teacher_outputs(compute_outputs(teacher, x, outputs, BATCH, levels=levels))
    module.train()
    opt = torch.optim.Adam([p for p in module.parameters() if p.requires_grad], 3e-3)

    def step():
        terms, _ = module.loss_terms(x, y, index)
        loss = sum(terms.values()) if stage == "init" else sum(weights[k] * v for k, v in terms.items())
        opt.zero_grad()
        loss.backward()
        opt.step()

    return median_ms(step, repeats, warmup=3)


def distill_node(method: str, overrides: dict) -> dict:
    node = OmegaConf.to_container(OmegaConf.load(REPO / "conf" / "distill" / f"{method}.yaml"))
    return {**node, **overrides.get(method, {})}


def method_seconds(teacher, student: str, node: dict, repeats: int = 20) -> tuple[float, float, float]:
    """(ms per step, s per 54k-image epoch with its validation, s of the first stage) of one method."""
    steps, val_steps = TRAIN // BATCH + 1, VAL // BATCH + 1
    ms = method_step_ms(teacher, student, node, repeats=repeats)
    init_epochs = node.get("init_epochs", 0)
    init_ms = method_step_ms(teacher, student, node, "init", repeats) if init_epochs else 0.0
    epoch = (steps * ms + val_steps * ms / 6) / 1000  # validation: forward only, larger batches
    return ms, epoch, init_epochs * steps * init_ms / 1000


def trial_seconds(ms: float, epoch: float, init: float, tune: dict) -> float:
    """One trial: tune.train_batches of each epoch's training steps (and of the first stage's), the
    whole validation split after each epoch."""
    part = tune.get("train_batches", 1.0)
    val = (VAL // BATCH + 1) * ms / 6 / 1000
    return part * (init + tune["epochs"] * (epoch - val)) + tune["epochs"] * val + TRIAL_OVERHEAD_S


def main() -> None:
    plan = OmegaConf.to_container(OmegaConf.load(MATRIX))
    params = plan["hydra"]["sweeper"]["params"]
    pairs = [p.strip("'") for p in params["pair"].split("','")]
    methods, seeds = params["distill"].split(","), len(str(params["seed"]).split(","))
    epochs, tune, t_epochs = plan["trainer"]["max_epochs"], plan["tune"], plan["teacher"]["max_epochs"]
    overrides = plan.get("distill_overrides", {}).get("*", {})
    steps, val_steps = TRAIN // BATCH + 1, VAL // BATCH + 1
    teacher_arch, threads = pairs[0].split("->")[0], torch.get_num_threads()
    t_train = teacher_step_ms(teacher_arch, threads)
    teacher_min = t_epochs * (steps * t_train + val_steps * t_train / 3) / 60_000
    print(f"teacher {teacher_arch}: {t_train:.0f} ms/step on {threads} threads -> {teacher_min:.1f} min")
    teacher = create_model(teacher_arch, num_classes=10, in_channels=1).eval()
    repeats, matched = tune.get("repeats", 1), tune.get("match_budget", True)
    totals = []
    for pair in pairs:
        student = pair.split("->")[1]
        cells = studies = 0.0
        for m in methods:
            node = distill_node(m, overrides)
            ms, epoch, init = method_seconds(teacher, student, node)
            # matched budgets: a first stage that trains the student comes out of the epochs (kdexp/bench/tuning.py)
            taken = node.get("init_epochs", 0) if matched and METHODS.get(m).init_trains_student else 0
            cells += repeats * seeds * (init + (epochs - taken) * epoch + CELL_OVERHEAD_S)
            trial = {**tune, "epochs": tune["epochs"] - taken}
            studies += repeats * tune["n_trials"] * trial_seconds(ms, epoch, init, trial)  # every row, vanilla too
            print(f"  {pair} {m}: {ms:.0f} ms/step, {epoch:.0f} s/epoch" + (f", init {init:.0f} s" if init else ""))
        totals.append((cells + studies) / 60)
        print(f"{pair}: cells {cells / 60:.0f} min, studies {studies / 60:.0f} min")
    print(f"total: {sum(totals):.0f} min of one thread after the teacher's {teacher_min:.0f} min; as two 1-thread "
          f"processes (1.2-1.3x one 2-thread process here) about {teacher_min + sum(totals) / 2:.0f} min of wall")


if __name__ == "__main__":
    main()
