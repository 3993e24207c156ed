"""Where CI's time goes, in CPU seconds: CI runs on 2 quiet cores, while a shared machine's wall clock says more
about its other users than about a test. CPU seconds of this process and of every child it waited for (the
kdexp-train subprocesses of the e2e tests) rank tests and compare a change before/after on a busy machine.

    python benchmarks/ci_times.py tests tests/e2e/test_matrix.py [pytest args...]  # per test: CPU s, wall s
    python benchmarks/ci_times.py records                                     # one tiny run, records on/off

`tests` times setup + call + teardown of each test (a module fixture counts in its first test), appending each
row to --out as it ends (a long file can be read while it runs). `records` runs the e2e tests' tiny experiment
with and without MLflow Models and student exports (tracking.log_model / export_student), back to back.
Daemons a test starts and does not wait for (PostgreSQL, an mlflow server) are not counted.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TINY = ["data=synthetic", "data.num_samples=300", "data.num_test=100", "data.image_size=8", "teacher=cnn_small",
        "student=cnn_tiny", "trainer.max_epochs=2", "eval.latency_repeats=2", "eval.latency_batch=8"]
NO_RECORDS = ["tracking.log_model=false", "tracking.export_student=false"]


def cpu_seconds() -> float:
    me, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + children.ru_utime + children.ru_stime


class PerTestTimes:
    """A pytest plugin: one `cpu_s<TAB>wall_s<TAB>test id` line per test, appended to `out`."""

    def __init__(self, out: Path):
        self.out, self.rows = out, []

    def pytest_runtest_protocol(self, item, nextitem):
        self.start = (cpu_seconds(), time.monotonic())

    def pytest_runtest_logfinish(self, nodeid, location):
        cpu, wall = cpu_seconds() - self.start[0], time.monotonic() - self.start[1]
        self.rows.append((cpu, wall))
        with open(self.out, "a") as handle:
            handle.write(f"{cpu:.1f}\t{wall:.1f}\t{nodeid}\n")

    def pytest_sessionfinish(self, session):
        with open(self.out, "a") as handle:
            handle.write(f"{sum(r[0] for r in self.rows):.1f}\t{sum(r[1] for r in self.rows):.1f}\tTOTAL\n")


def time_tests(args: list[str], out: Path) -> int:
    import pytest

    return pytest.main(["-q", "-p", "no:cacheprovider", *args], plugins=[PerTestTimes(out)])


def time_records() -> None:
    exe = Path(sys.executable).parent / "kdexp-train"
    env = {**os.environ, "KDEXP_OFFLINE": "1", "KDEXP_SYSTEM_METRICS": "false"}
    env.pop("MLFLOW_TRACKING_URI", None)
    for label, extra in (("records on", []), ("records off", NO_RECORDS)):
        with tempfile.TemporaryDirectory() as cwd:
            before, start = resource.getrusage(resource.RUSAGE_CHILDREN), time.monotonic()
            subprocess.run([str(exe), *TINY, *extra], cwd=cwd, env=env, check=True, capture_output=True)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
            print(f"{label}: {cpu:.1f} CPU s, {time.monotonic() - start:.1f} wall s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    tests = sub.add_parser("tests", help="per-test CPU and wall seconds")
    tests.add_argument("--out", type=Path, default=Path("ci_times.tsv"))
    sub.add_parser("records", help="a tiny kdexp-train run with and without MLflow Models and exports")
    known, rest = parser.parse_known_args()
    if known.what == "records":
        time_records()
    else:
        sys.exit(time_tests(rest, known.out))


if __name__ == "__main__":
    main()
