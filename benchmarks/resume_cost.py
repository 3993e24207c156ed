"""Seconds a kill -9 at mid-training costs, with resume (re-run the same command) versus a fresh start.

    python benchmarks/resume_cost.py [--epochs 20] [--data digits]

Three runs of the same `kdexp-train` (a teacher trained for --epochs, then a student): uninterrupted; killed
when the teacher's epoch epochs/2 ends, then re-run (resumes from its last.ckpt); the kill's cost is
(killed + re-run) - uninterrupted. Without checkpoints the re-run would start from epoch 0: its cost would be
the whole killed attempt.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path(sys.executable).parent


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--data", default="digits")
    a = p.parse_args(argv)
    env = {**os.environ, "KDEXP_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    work = Path(tempfile.mkdtemp(prefix="resume-cost-"))
    args = [f"data={a.data}", f"teacher.max_epochs={a.epochs}", "trainer.max_epochs=5", "baseline=false"]

    def run(root: Path, kill_at: str | None = None) -> float:
        start = time.perf_counter()
        proc = subprocess.Popen([str(BIN / "kdexp-train"), *args, f"paths.root={root}"], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for line in proc.stdout:
            if kill_at and kill_at in line:
                proc.send_signal(signal.SIGKILL)
                break
        proc.wait()
        return time.perf_counter() - start

    whole = run(work / "a")
    killed = run(work / "b", kill_at=f"| epoch {a.epochs // 2}/{a.epochs} |")
    resumed = run(work / "b")
    out = {"uninterrupted_s": whole, "killed_after_s": killed, "rerun_s": resumed,
           "lost_with_resume_s": killed + resumed - whole, "lost_without_resume_s": killed}
    print(f"uninterrupted {whole:.1f} s; killed at teacher epoch {a.epochs // 2}/{a.epochs} after {killed:.1f} s; "
          f"re-run {resumed:.1f} s -> lost with resume {out['lost_with_resume_s']:.1f} s "
          f"(a fresh start would lose {killed:.1f} s)")
    return out


if __name__ == "__main__":
    main()
