"""Seconds `kdexp-train` takes to reject bad input (wall, median of repeats): the config is validated before
Lightning, the zoo (torch) or the data are loaded.

    python benchmarks/fail_fast.py [--repeats 5]
    PYTHONPATH=/path/to/an/older/checkout python benchmarks/fail_fast.py    # the same cases on older code
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

CASES = [
    ("distill.temperature=0",), ("recipe.lr=0",), ("distill.weights.kd=-1",), ("trainer.max_epochs=0",),
    ("teacher.arch=nope",), ("student=nope",), ("seed=abc",), ("teacher.ckpt=/no/such/file.pt",),
]


def seconds(args: tuple[str, ...], cwd: str) -> tuple[float, int]:
    env = {**os.environ, "KDEXP_OFFLINE": "1"}
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", "from kdexp.cli import train; train()", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)
    return time.perf_counter() - start, done.returncode


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=5)
    a = p.parse_args(argv)
    out = {}
    with tempfile.TemporaryDirectory() as cwd:
        print("| bad input | exit | seconds (median) |\n|---|---|---|")
        for case in CASES:
            runs = [seconds(case, cwd) for _ in range(a.repeats)]
            median = statistics.median(s for s, _ in runs)
            out[" ".join(case)] = median
            print(f"| `{' '.join(case)}` | {runs[0][1]} | {median:.2f} |")
    try:
        print(f"load average: {os.getloadavg()}")
    except OSError:
        pass
    return out


if __name__ == "__main__":
    main()
