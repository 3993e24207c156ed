"""How many lines `kdexp-train` prints for each kind of bad input, its exit status, and whether an MLflow store
was created: every case should be one line, exit 2, no store (docs/typed_config.md).

    python benchmarks/error_lines.py
    PYTHONPATH=/path/to/an/older/checkout python benchmarks/error_lines.py    # the same cases on older code
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

SAMPLER_YAML = """# @package _global_
defaults:
  - override /hydra/sweeper: kdexp_optuna
  - override /hydra/sweeper/sampler: bayes
"""
# where the old code accepted a typo, it trained: keep that short
CHEAP = ("data.limit=64", "trainer.max_epochs=1", "teacher.max_epochs=1", "tracking.log_model=false",
         "tracking.export_student=false", "eval.latency_repeats=1", "tracking.system_metrics=false")
CASES = [
    ("student.foo=1",), ("teacher.max_epoch=3",), ("+student.foo=1",), ("data.batch_sise=8",),
    ("distill.temprature=2",), ("+trainer.max_epoch=3",), ("variant=ensemble", "teacher.combin=mean_probs"),
    ("variant=born_again", "variant.generations=abc"), ("seed=abc",), ("recipe.lrr=0.1",),
    ("trainer=gpux",), ("data=foo",), ("seed=[1,2",),
    ("-m", "+sweep=kd_temperature", "hydra/sweeper/sampler=bayes"),
    ("-m", "hparams_search=bad_sampler"),  # the sampler chosen in a YAML file's defaults list
]


def run(args: tuple[str, ...], cwd: Path, root: Path) -> tuple[int, int, bool]:
    """(exit status, lines of stdout + stderr, whether `root`/mlflow.db exists) of one kdexp-train call."""
    env = {**os.environ, "KDEXP_OFFLINE": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    extra = ["--config-dir", str(cwd / "conf")] if "hparams_search=bad_sampler" in args else []
    done = subprocess.run([sys.executable, "-c", "from kdexp.cli import train; train()", *extra, *args,
                           *CHEAP, f"paths.root={root}"], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    lines = (done.stdout + done.stderr).strip().splitlines()
    return done.returncode, len(lines), (root / "mlflow.db").exists()


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        cwd = Path(tmp)
        (cwd / "conf" / "hparams_search").mkdir(parents=True)
        (cwd / "conf" / "hparams_search" / "bad_sampler.yaml").write_text(SAMPLER_YAML)
        print("| bad input | exit | lines | mlflow.db |\n|---|---|---|---|")
        for i, case in enumerate(CASES):
            code, lines, store = run(case, cwd, cwd / f"out{i}")
            print(f"| `{' '.join(case)}` | {code} | {lines} | {'yes' if store else 'no'} |", flush=True)


if __name__ == "__main__":
    main()
