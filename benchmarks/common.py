"""Timing helpers shared by the benchmarks: interleaved repeats, medians, load, result files."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
FASHION_ROOT = "/usr/share/datasets/fashion-mnist"


def loadavg() -> str:
    """1/5/15-minute load averages: other processes competing for the cores while we measure."""
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def machine() -> dict:
    cpu = "unknown"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version()}


def timed(fn: Callable[[], object]) -> tuple[float, float, object]:
    """(wall s, process CPU s, result) of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - wall, time.process_time() - cpu, out


def interleaved(cases: dict[str, Callable[[], object]], repeats: int, warmup: bool = False) -> dict[str, dict]:
    """Run every case `repeats` times, alternating the order (ABC, CBA, ...) so that a load change on
    the shared machine hits all cases alike; returns per case the wall/CPU times and their medians.
    warmup: one untimed call of each case first (kernel selection, allocator, lazy imports)."""
    names = list(cases)
    if warmup:
        for name in names:
            cases[name]()
    walls: dict[str, list[float]] = {n: [] for n in names}
    cpus: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        for name in names if r % 2 == 0 else reversed(names):
            wall, cpu, _ = timed(cases[name])
            walls[name].append(wall)
            cpus[name].append(cpu)
    return {n: {"wall_s": walls[n], "cpu_s": cpus[n], "wall_median_s": statistics.median(walls[n]),
                "cpu_median_s": statistics.median(cpus[n])} for n in names}


def median_ms(fn: Callable[[], object], repeats: int, warmup: int = 3) -> float:
    """Median milliseconds of `repeats` calls, after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def ratio(results: dict, a: str, b: str, key: str = "wall_median_s") -> float:
    return results[a][key] / results[b][key]


def write_results(out_dir: Path, name: str, results: dict, markdown: str) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{name}.json").write_text(json.dumps(results, indent=2, sort_keys=True, default=str))
    (out_dir / f"{name}.md").write_text(markdown + "\n")


def md_table(header: list[str], rows: list[list]) -> str:
    def fmt(v) -> str:
        if isinstance(v, float):
            return f"{v:,.3g}" if abs(v) < 100 else f"{v:,.0f}"
        return str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)
