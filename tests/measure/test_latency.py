"""Latency you can trust (kdexp/measure/latency.py): models timed interleaved in repeated blocks, median and IQR,
ratios paired block by block, noisy takes re-taken then flagged, a smaller student measured slower than its
teacher flagged, and the teacher/student ratio holding under a competing CPU load."""

from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from kdexp.measure.latency import NOISE_LIMIT, RETAKES, measure_latency, time_models
from kdexp.models import create_model
from kdexp.tracking.summary import summary_table
from kdexp.training.evaluation import latency, latency_flags, latency_tags


class FakeMachine:
    """A clock that only moves when a model runs: a call of `name` costs ms(batch, k) for its k-th call."""

    def __init__(self, **costs):
        self.now, self.calls, self.costs = 0.0, [], costs

    def clock(self) -> float:
        return self.now

    def runner(self, name: str):
        def at(batch: int):
            def call():
                k = sum(1 for n, _ in self.calls if n == name)
                self.calls.append((name, batch))
                self.now += self.costs[name](batch, k, self.now) / 1e3

            return call

        return at

    def measure(self, blocks: int, **options):
        options = {"block_s": 0.0, "warmup_s": 0.0, **options}  # one call per block, 3 warm-up calls
        return measure_latency({n: self.runner(n) for n in self.costs}, (1, 8), blocks, "teacher",
                               clock=self.clock, **options)


def steady(ms: float):
    return lambda batch, k, now: ms * batch


def test_models_alternate_block_by_block_after_their_warm_up():
    machine = FakeMachine(teacher=steady(1.0), student=steady(0.25))
    result = machine.measure(4)
    at_b1 = [n for n, b in machine.calls if b == 1]
    assert at_b1 == ["teacher"] * 3 + ["student"] * 3 + ["teacher", "student", "student", "teacher"] * 2
    assert result.attempts == {1: 1, 8: 1} and result.noisy == frozenset()
    assert result.metrics("student", "student/") == pytest.approx({
        "student/latency_b1_ms": 0.25, "student/latency_b1_iqr_ms": 0.0, "student/latency_b1_ms_ratio": 0.25,
        "student/latency_b1_ratio_iqr": 0.0, "student/latency_b8_ms": 2.0, "student/latency_b8_iqr_ms": 0.0,
        "student/latency_b8_ms_ratio": 0.25, "student/latency_b8_ratio_iqr": 0.0, "student/latency_noisy": 0.0})
    teacher = result.metrics("teacher", "teacher/")
    assert teacher["teacher/latency_b8_ms"] == pytest.approx(8.0) and "teacher/latency_b8_ms_ratio" not in teacher


def test_blocks_are_sized_to_the_model_and_time_is_per_call():
    machine = FakeMachine(teacher=steady(2.0), student=steady(0.5))
    result = machine.measure(3, block_s=0.004)  # 4 ms a block: 2 teacher calls, 8 student calls at batch 1
    b1_calls = [n for n, b in machine.calls if b == 1]
    assert b1_calls.count("teacher") == 3 + 3 * 2 and b1_calls.count("student") == 3 + 3 * 8
    times = result.takes[1].times
    assert (times["teacher"].median, times["teacher"].iqr) == pytest.approx((2.0, 0.0), abs=1e-9)
    assert (times["student"].median, times["student"].iqr) == pytest.approx((0.5, 0.0), abs=1e-9)


def test_a_load_that_slows_both_models_moves_their_times_not_their_paired_ratio():
    # the machine gets busier as time passes: 1x at the start, ~5x by the end of a take
    def loaded(ms):
        return lambda batch, k, now: ms * batch * (1 + 40 * now)

    machine = FakeMachine(teacher=loaded(1.0), student=loaded(0.25))
    result = machine.measure(20, retakes=0)
    take = result.takes[1]
    assert take.times["teacher"].relative > NOISE_LIMIT and take.times["student"].relative > NOISE_LIMIT
    assert take.ratios["student"].median == pytest.approx(0.25, rel=0.02)
    assert take.ratios["student"].relative < 0.1  # adjacent blocks: nearly the same load
    assert result.noisy == {"teacher", "student"}  # the milliseconds are flagged, the ratio is sound


def test_a_noisy_take_is_retaken_and_a_calm_retake_is_kept_unflagged():
    # the student's 5th and 7th calls (blocks 2 and 4 of the first take at batch 1) take 3x as long
    burst = FakeMachine(teacher=steady(1.0), student=lambda b, k, now: 0.25 * b * (3 if b == 1 and k in (4, 6) else 1))
    result = burst.measure(4)
    assert result.attempts == {1: 2, 8: 1} and result.noisy == frozenset()
    kept = result.takes[1].times["student"]
    assert (kept.median, kept.iqr) == pytest.approx((0.25, 0.0), abs=1e-9)


def test_a_take_that_stays_noisy_is_flagged_after_the_retakes():
    jitter = FakeMachine(teacher=steady(1.0), student=lambda b, k, now: 0.25 * b * (3 if k % 2 else 1))
    result = jitter.measure(4)
    assert result.attempts == {1: RETAKES + 1, 8: RETAKES + 1}
    assert result.noisy == {"student"}  # its time and its ratio spread; the teacher's did not
    assert result.metrics("student", "")["latency_noisy"] == 1.0
    assert result.metrics("teacher", "")["latency_noisy"] == 0.0


def test_flags_tags_and_summary_lines():
    conf = {"eval": {"latency_batch": 8}, "distill": {"name": "kd"}, "teacher": {"arch": "cnn_medium"},
            "student": {"arch": "cnn_tiny"}, "data": {"name": "digits"}, "seed": 0, "trainer": {"max_epochs": 1},
            "baseline": False}
    m = {"teacher/params": 300e3, "teacher/flops": 4e6, "student/params": 6e3, "student/flops": 1e5,
         "teacher/latency_b1_ms": 1.0, "student/latency_b1_ms": 1.3, "student/latency_b1_ms_ratio": 1.3,
         "student/latency_b1_ratio_iqr": 0.1, "student/latency_b8_ms_ratio": 0.5, "student/latency_b8_ratio_iqr": 0.05,
         "student/latency_noisy": 1.0, "teacher/latency_noisy": 0.0, "latency/threads": 1.0, "latency/blocks": 20.0}
    m.update(latency_flags(m))
    assert m["student/latency_slower_than_teacher"] == 1.0
    assert latency_tags(m) == {"kdexp.latency_threads": "1", "kdexp.latency_clock": "thread_cpu",
                               "kdexp.latency_flags": "noisy:student slower_than_teacher"}
    text = summary_table(m, conf)
    assert "student/teacher per block: b1 1.300 (IQR 0.100), b8 0.500 (IQR 0.050)" in text
    assert "1 torch thread(s), thread CPU time" in text and "LATENCY NOISY: student" in text and "LATENCY FLAG" in text
    # a student that is larger, or faster, is not flagged
    assert latency_flags({**m, "student/params": 400e3})["student/latency_slower_than_teacher"] == 0.0
    calm = {**m, "student/latency_b1_ms_ratio": 0.9, "student/latency_noisy": 0.0}
    calm.update(latency_flags(calm))
    assert calm["student/latency_slower_than_teacher"] == 0.0 and latency_tags(calm)["kdexp.latency_flags"] == "none"
    assert "LATENCY" not in summary_table(calm, conf)


@pytest.fixture
def one_thread():
    """Latency on one torch thread (timed in thread CPU time: a shared machine's load does not inflate it)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_an_experiments_models_are_timed_together_each_time_it_asks(one_thread):
    torch.manual_seed(0)
    teacher, student = create_model("cnn_tiny", 10, 1), create_model("mlp_small", 10, 1).train()
    ctx = SimpleNamespace(timed={"teacher": teacher}, input_shape=(1, 8, 8),
                          conf={"eval": {"latency_batch": 4, "latency_repeats": 2}})
    first = latency(ctx, {"student": student})
    assert {"teacher/latency_b4_ms", "teacher/latency_b4_iqr_ms", "student/latency_b1_ms_ratio",
            "student/latency_b4_ratio_iqr", "student/latency_noisy"} <= set(first)
    assert first["latency/blocks"] == 2 and first["latency/threads"] == 1
    assert student.training  # timed on an eval copy: a training model stays as it was
    second = latency(ctx, {"student": student})
    assert second["teacher/latency_b1_ms"] != first["teacher/latency_b1_ms"]  # measured again, not memoized


def spinner() -> subprocess.Popen:
    """A process that keeps one core busy until killed (started once it says so)."""
    proc = subprocess.Popen([sys.executable, "-c", "print('spinning', flush=True)\nwhile True: pass"],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "spinning"
    return proc


@pytest.mark.slow  # ~3 s on a quiet 2-core machine, more on a busy one
def test_teacher_student_ratio_holds_under_a_competing_cpu_load(one_thread):
    """The default digits pair (cnn_medium 328k -> cnn_tiny 6k parameters), one torch thread, idle and then
    beside a process spinning on a core: the student stays faster and its paired ratio moves < 25 %."""
    models = {"teacher": create_model("cnn_medium", 10, 1), "student": create_model("cnn_tiny", 10, 1)}
    idle = time_models(models, (1, 8, 8), (1, 16), 10)
    busy = spinner()
    try:
        loaded = time_models(models, (1, 8, 8), (1, 16), 10)
    finally:
        busy.kill()
        busy.wait()
    for b in (1, 16):
        quiet, load = idle.takes[b], loaded.takes[b]
        assert load.times["student"].median < load.times["teacher"].median
        assert load.ratios["student"].median < 1
        assert load.ratios["student"].median == pytest.approx(quiet.ratios["student"].median, rel=0.25), b
