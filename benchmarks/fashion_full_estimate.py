"""Wall-time estimate of sweeps/matrix/fashion_full.yaml on this machine, from step times measured here.

Measures batch-128 training steps of each student on one thread, the teacher's forward pass on one thread
(AB and ReviewKD run it online: its feature maps of 54k images exceed teacher_cache.max_gb) and its
training step on every thread; reads the plan (pairs, methods, seeds, epochs, tuning budget) from the
matrix file. The plan runs one process per pair on one thread each, after the teacher
(docs/fashion_full_benchmark.md). Method factors over the vanilla step follow the measured fashion_cpu
cells: a cached-teacher logit method 1.05x, AB and ReviewKD 1.1x and 1.3x for their own modules, plus the
online teacher; CRD adds its scoring against the 54k-entry memory banks, measured here (both sides, forward
and backward): on a CPU thread that, not the student, is most of a CRD step.
Compare with benchmarks/matrix_time.py after a run.
    python benchmarks/fashion_full_estimate.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `benchmarks` and `kdexp` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from benchmarks.common import median_ms
from kdexp.models import create_model

MATRIX = Path(__file__).resolve().parents[1] / "sweeps" / "matrix" / "fashion_full.yaml"
TRAIN, VAL, BATCH = 54_000, 6_000, 128
CELL_OVERHEAD_S, TRIAL_OVERHEAD_S = 8.0, 4.0  # start-up, test pass, records (+ ONNX export for cells)


def step_ms(arch: str, threads: int, train: bool = True, repeats: int = 30) -> float:
    torch.set_num_threads(threads)
    model = create_model(arch, num_classes=10, in_channels=1).train(train)
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    x, y = torch.randn(BATCH, 1, 28, 28), torch.randint(0, 10, (BATCH,))

    def step():
        if train:
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
        else:
            with torch.no_grad():
                model(x)

    return median_ms(step, repeats, warmup=5)


def crd_scoring_ms(bank: int, batch: int = BATCH, dim: int = 128, repeats: int = 5) -> float:
    """CRD's per-step scoring of both sides against a `bank`-entry memory (the whole-bank path that
    kdexp.distill.crd takes at this size), forward and backward, on one thread."""
    torch.set_num_threads(1)
    memory = torch.randn(bank, dim)
    idx = torch.randint(0, bank, (batch, 4097))
    v = torch.randn(batch, dim, requires_grad=True)
    start = time.perf_counter()
    for _ in range(repeats * 2):
        torch.exp((v @ memory.T.clone()).gather(1, idx) / 0.07).sum().backward()
    return (time.perf_counter() - start) / repeats * 1000


def main() -> None:
    plan = OmegaConf.to_container(OmegaConf.load(MATRIX))
    params = plan["hydra"]["sweeper"]["params"]
    pairs = [p.strip("'") for p in params["pair"].split("','")]
    methods, seeds = params["distill"].split(","), len(str(params["seed"]).split(","))
    epochs, tune, t_epochs = plan["trainer"]["max_epochs"], plan["tune"], plan["teacher"]["max_epochs"]
    steps, val_steps = TRAIN // BATCH + 1, VAL // BATCH + 1
    teacher_arch, threads = pairs[0].split("->")[0], torch.get_num_threads()
    t_train, t_fwd = step_ms(teacher_arch, threads), step_ms(teacher_arch, 1, train=False)
    teacher_min = t_epochs * (steps * t_train + val_steps * t_train / 3) / 60_000
    crd_ms = crd_scoring_ms(TRAIN)
    print(f"teacher {teacher_arch}: {t_train:.0f} ms/step on {threads} threads -> "
          f"{teacher_min:.1f} min; forward {t_fwd:.0f} ms on 1 thread; CRD scoring {crd_ms:.0f} ms/step")
    per_pair = []
    for pair in pairs:
        student = pair.split("->")[1]
        s_ms = step_ms(student, 1)
        epoch = (steps * s_ms + val_steps * s_ms / 3) / 1000
        online, crd = steps * t_fwd / 1000, steps * crd_ms / 1000
        cost = {m: {"none": epoch, "crd": epoch + crd, "ab": 1.1 * epoch + online,
                    "reviewkd": 1.3 * epoch + online}.get(m, 1.05 * epoch) for m in methods}
        cells = sum(seeds * (epochs * c + CELL_OVERHEAD_S) for c in cost.values())
        studies = sum(tune["n_trials"] * (tune["epochs"] * c + TRIAL_OVERHEAD_S) for m, c in cost.items()
                      if m != "none")
        per_pair.append((cells + studies) / 60)
        print(f"{pair}: {s_ms:.0f} ms/step (1 thread), {epoch:.1f} s/epoch; cells {cells / 60:.0f} min, "
              f"studies {studies / 60:.0f} min")
    print(f"total: teacher {teacher_min:.0f} min + the longest pair {max(per_pair):.0f} min "
          f"(one process per pair) = {teacher_min + max(per_pair):.0f} min; "
          f"{teacher_min + sum(per_pair):.0f} min in one process")


if __name__ == "__main__":
    main()
