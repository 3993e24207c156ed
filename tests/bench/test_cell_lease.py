"""One process at a time trains a matrix cell (kdexp.bench.matrix.cell_lease): a second one waits for the first and
then finds the cell finished; a dead holder frees it; runs outside matrices and DDP ranks > 0 take none."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from kdexp.bench.matrix import cell_lease

HOLD = """
import json, sys, time
from pathlib import Path
from kdexp.bench.matrix import cell_lease
conf, done = json.loads(sys.argv[1]), Path(sys.argv[2])
with cell_lease(conf, "c0ffee"):
    print("held", flush=True)
    time.sleep(float(sys.argv[3]))
    done.write_text("trained")
"""


def matrix_conf(tmp_path: Path, skip_finished: bool = True) -> dict:
    return {"skip_finished": skip_finished, "tracking": {"uri": f"sqlite:///{tmp_path}/store/mlflow.db"},
            "paths": {"root": str(tmp_path / "outputs")}}


def holder(tmp_path: Path, seconds: float) -> tuple[subprocess.Popen, Path]:
    done = tmp_path / "done"
    proc = subprocess.Popen([sys.executable, "-c", HOLD, json.dumps(matrix_conf(tmp_path)), str(done), str(seconds)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc, done


def test_a_second_process_waits_until_the_holder_has_trained_the_cell(tmp_path, caplog):
    proc, done = holder(tmp_path, 1.0)
    with caplog.at_level("INFO", logger="kdexp"), cell_lease(matrix_conf(tmp_path), "c0ffee"):
        assert done.read_text() == "trained"  # only after the holder's block ended
    assert "cell c0ffee is being trained by another process; waiting" in caplog.text
    assert proc.wait(30) == 0
    assert (tmp_path / "store" / "locks").is_dir() and not (tmp_path / "outputs").exists()  # beside the store


def test_a_killed_holder_frees_the_cell(tmp_path):
    proc, done = holder(tmp_path, 600)
    proc.kill()
    proc.wait(30)
    with cell_lease(matrix_conf(tmp_path), "c0ffee"):
        assert not done.exists()


@pytest.mark.parametrize("case", ["no skip_finished", "DDP rank 1"])
def test_runs_outside_matrices_and_other_ranks_do_not_wait(tmp_path, monkeypatch, case):
    proc, done = holder(tmp_path, 600)
    try:
        if case == "DDP rank 1":
            monkeypatch.setenv("LOCAL_RANK", "1")
        with cell_lease(matrix_conf(tmp_path, skip_finished=case != "no skip_finished"), "c0ffee"):
            assert not done.exists()
    finally:
        proc.kill()
        proc.wait(30)
