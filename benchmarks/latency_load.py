"""Teacher/student latency ratio idle vs. under a competing CPU load, for the old protocol and the new one.

    python benchmarks/latency_load.py            # 5 repetitions of each condition
    python benchmarks/latency_load.py --quick    # smoke run

The pair is the default digits pair (teacher cnn_medium, 328k parameters -> student cnn_tiny, 6k) at batch 1
and 256, on one torch thread. Load: 0, 1 or 2 processes spinning on a core beside the measurement (this machine
has 2 cores and other users). Protocols:
  old     each model timed alone (0.25 s warm-up, median of 20 calls at batch 1 and 5 at batch 256, wall
          time), teacher then student, ratio = student median / teacher median (kdexp before issue 22)
  old, teacher idle   the old protocol's loaded student over its idle teacher: what a memoized or cached
          teacher figure gave
  new     kdexp.measure.latency: interleaved blocks, ratio per block, median (thread CPU time on one thread)
  new, wall clock     the same blocks timed in wall time: what interleaving alone buys
Each condition is measured --reps times: the table gives the median and IQR of the ratio over repetitions,
and for the new protocol the median within-measurement IQR of the per-block ratio.
Results: outputs/bench/latency_load[_quick].{json,md}.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `benchmarks` and `kdexp` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from benchmarks.common import REPO, loadavg, machine, md_table, write_results
from kdexp.measure.latency import Spread, time_models
from kdexp.models import create_model

SHAPE = (1, 8, 8)


@torch.inference_mode()
def old_latency_ms(model: torch.nn.Module, batch: int, repeats: int) -> float:
    """The protocol kdexp used before (cpu_latency_ms): one model alone, warm-up, median of single calls."""
    x = torch.randn(batch, *SHAPE)
    warm_until, warm_runs = time.perf_counter() + 0.25, 0
    while warm_runs < 3 or (time.perf_counter() < warm_until and warm_runs < 200):
        model(x)
        warm_runs += 1
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model(x)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def old_protocol(models: dict, batches: tuple[int, ...], repeats: int) -> dict:
    return {b: {name: old_latency_ms(m, b, repeats if b == 1 else max(3, repeats // 4)) for name, m in models.items()}
            for b in batches}


def new_protocol(models: dict, batches: tuple[int, ...], blocks: int, clock=None) -> dict:
    result = time_models(models, SHAPE, batches, blocks, **({"clock": clock} if clock else {}))
    return {b: {"ratio": t.ratios["student"].median, "ratio_iqr": t.ratios["student"].iqr,
                "teacher_ms": t.times["teacher"].median, "student_ms": t.times["student"].median,
                "takes": result.attempts[b], "noisy": sorted(result.noisy)} for b, t in result.takes.items()}


def spinners(n: int) -> list[subprocess.Popen]:
    procs = [subprocess.Popen([sys.executable, "-c", "print('spinning', flush=True)\nwhile True: pass"],
                              stdout=subprocess.PIPE, text=True) for _ in range(n)]
    for p in procs:
        p.stdout.readline()
    return procs


def measure(models: dict, batches: tuple[int, ...], load: int, reps: int, blocks: int, repeats: int) -> dict:
    out = {"old": [], "new": [], "new_wall": [], "load_during": []}
    procs = spinners(load)
    try:
        for _ in range(reps):  # the protocols alternate, so that a change of the machine's load hits all
            out["old"].append(old_protocol(models, batches, repeats))
            out["new"].append(new_protocol(models, batches, blocks))
            out["new_wall"].append(new_protocol(models, batches, blocks, time.perf_counter))
            out["load_during"].append(loadavg())
    finally:
        for p in procs:
            p.kill()
            p.wait()
    return out


def summarize(ratios: list[float]) -> str:
    s = Spread.of(ratios)
    return f"{s.median:.3f} ({s.iqr:.3f})"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    batches, reps, blocks, repeats = ((1, 16), 2, 4, 5) if args.quick else ((1, 256), args.reps, 20, 20)
    torch.manual_seed(0)
    models = {"teacher": create_model("cnn_medium", 10, 1).eval(), "student": create_model("cnn_tiny", 10, 1).eval()}
    results = {"machine": machine(), "load_before": loadavg(), "batches": batches, "reps": reps, "blocks": blocks,
               "loads": {}}
    for load in (0, 1, 2):
        results["loads"][load] = measure(models, batches, load, reps, blocks, repeats)
    results["load_after"] = loadavg()

    rows = []
    idle = results["loads"][0]
    for b in batches:
        for load, m in results["loads"].items():
            old = [r[b]["student"] / r[b]["teacher"] for r in m["old"]]
            mixed = [r[b]["student"] / i[b]["teacher"] for r, i in zip(m["old"], idle["old"])]
            rows.append([b, f"{load} spinner(s)", summarize(old), summarize(mixed),
                         summarize([r[b]["ratio"] for r in m["new"]]),
                         f"{statistics.median(r[b]['ratio_iqr'] for r in m['new']):.3f}",
                         summarize([r[b]["ratio"] for r in m["new_wall"]]),
                         f"{statistics.median(r[b]['ratio_iqr'] for r in m['new_wall']):.3f}",
                         sum(bool(r[b]["noisy"]) for r in m["new"])])
    table = md_table(["batch", "load", "old: ratio (IQR)", "old, teacher idle", "new: ratio (IQR)",
                      "new: within IQR", "new, wall clock", "wall: within IQR", "new: noisy takes"], rows)
    note = (f"student/teacher latency ratio, cnn_tiny / cnn_medium on 8x8x1, {args.threads} torch thread(s); "
            f"median (IQR) over {reps} repetitions per condition; new protocol {blocks} blocks. Load average "
            f"before/after: {results['load_before']} / {results['load_after']}; {results['machine']}")
    name = "latency_load" + ("_quick" if args.quick else "")
    write_results(REPO / "outputs" / "bench", name, results, table + "\n\n" + note)
    print(table + "\n\n" + note)


if __name__ == "__main__":
    main()
