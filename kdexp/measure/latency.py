"""CPU latency that can be compared: the models of one experiment (teacher, student, ...) timed interleaved in
repeated blocks, so that a load change on a shared machine hits all of them alike. Per model the median and
the IQR of its per-call time over the blocks; against a reference model the ratio taken block by block
(paired: both halves of each ratio ran within milliseconds of each other). A batch size whose spread stays
above NOISE_LIMIT is re-taken up to RETAKES times, then reported as noisy. Nothing here is memoized: a
latency is a measurement of the machine at that moment, not a property of the architecture. docs/latency.md.
"""

from __future__ import annotations

import copy
import math
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from kdexp.models.base import example_input

# IQR/median above which a median is re-taken, then flagged. With n blocks the median's standard error is
# about 0.93 IQR/sqrt(n) (normal samples): at 0.25 and 20 blocks it is ~5 % of the median, a 95 % interval of
# ~±10 %, well inside the 25 % by which a teacher/student ratio may move under load (docs/latency.md).
NOISE_LIMIT = 0.25
RETAKES = 2  # takes after the first one, at most
# Each model runs this long at least per block: several scheduler slices, so that a preemption is averaged
# over rather than being the whole of a block (shorter blocks scatter more under load: docs/latency.md).
BLOCK_S = 0.02
WARMUP_S = 0.05  # per model and batch size, and at least 3 calls (allocator, kernel selection)
MAX_CALLS = 10_000  # per block: a model faster than the clock's resolution still finishes
BLOCK_CAP_S = 0.5  # wall time after which a block stops early (its calls suddenly far slower than in warm-up)

Runner = Callable[[int], Callable[[], object]]  # batch size -> a no-argument forward pass on such a batch


@dataclass(frozen=True)
class Spread:
    """Median and interquartile range of some samples."""

    median: float
    iqr: float

    @classmethod
    def of(cls, samples: Sequence[float]) -> Spread:
        if len(samples) < 2:
            return cls(float(samples[0]), 0.0)
        q1, median, q3 = statistics.quantiles(samples, n=4, method="inclusive")
        return cls(median, q3 - q1)

    @property
    def relative(self) -> float:
        """IQR / median (inf for a zero median)."""
        return self.iqr / self.median if self.median > 0 else math.inf


@dataclass(frozen=True)
class Take:
    """One interleaved measurement at one batch size."""

    samples: dict[str, list[float]]  # name -> ms per call, one per block
    reference: str | None

    @property
    def times(self) -> dict[str, Spread]:
        return {name: Spread.of(ms) for name, ms in self.samples.items()}

    @property
    def ratios(self) -> dict[str, Spread]:
        """name / reference, block by block."""
        if self.reference not in self.samples:
            return {}
        ref = self.samples[self.reference]
        return {name: Spread.of([a / b for a, b in zip(ms, ref)]) for name, ms in self.samples.items()
                if name != self.reference}

    def noisy(self, limit: float) -> set[str]:
        """Names whose time, or ratio to the reference, spreads more than `limit`."""
        spreads = [*self.times.items(), *self.ratios.items()]
        return {name for name, s in spreads if s.relative > limit}

    @property
    def worst(self) -> float:
        return max(s.relative for s in [*self.times.values(), *self.ratios.values()])


@dataclass(frozen=True)
class Latency:
    """The kept take per batch size, how many takes each needed, and the conditions."""

    takes: dict[int, Take]
    attempts: dict[int, int]
    noisy: frozenset[str]  # names still above the limit after the retakes
    threads: int
    blocks: int
    clock: str  # "thread_cpu" or "wall" (default_clock)

    def metrics(self, name: str, prefix: str) -> dict[str, float]:
        """`name`'s figures as {prefix}latency_b<b>_ms (median), _b<b>_iqr_ms, and against the reference
        _b<b>_ms_ratio (median of the per-block ratios) and _b<b>_ratio_iqr; {prefix}latency_noisy 0/1."""
        out: dict[str, float] = {}
        for b, take in self.takes.items():
            t = take.times[name]
            out.update({f"{prefix}latency_b{b}_ms": t.median, f"{prefix}latency_b{b}_iqr_ms": t.iqr})
            if name in take.ratios:
                r = take.ratios[name]
                out.update({f"{prefix}latency_b{b}_ms_ratio": r.median, f"{prefix}latency_b{b}_ratio_iqr": r.iqr})
        out[f"{prefix}latency_noisy"] = float(name in self.noisy)
        return out


def default_clock() -> Callable[[], float]:
    """The measuring thread's CPU time when torch computes on one thread: immune to the time-slicing of a
    shared machine (the latency the model has on a core of its own). Wall time with more threads, whose
    workers' time a thread's CPU time would miss: a busy machine inflates it, and the spread shows it."""
    return time.thread_time if torch.get_num_threads() == 1 else time.perf_counter


def warm_up(call: Callable[[], object], seconds: float, clock: Callable[[], float]) -> float:
    """Run `call` at least 3 times and `seconds` long; returns its time per call (median)."""
    times: list[float] = []
    until = clock() + seconds
    while len(times) < 3 or (clock() < until and len(times) < MAX_CALLS):
        start = clock()
        call()
        times.append(clock() - start)
    return statistics.median(times)


def take_once(calls: Mapping[str, Callable[[], object]], counts: Mapping[str, int], blocks: int,
              reference: str | None, clock: Callable[[], float]) -> Take:
    """`blocks` blocks; in each every model runs counts[name] times back to back, in the order of `calls`
    on even blocks and reversed on odd ones (a drift within a block then favours no one)."""
    names = list(calls)
    samples: dict[str, list[float]] = {n: [] for n in names}
    for i in range(blocks):
        for name in names if i % 2 == 0 else reversed(names):
            call, n, done = calls[name], counts[name], 0
            start, wall = clock(), time.perf_counter()
            while done < n and (done == 0 or time.perf_counter() - wall < BLOCK_CAP_S):
                call()
                done += 1
            samples[name].append((clock() - start) / done * 1e3)
    return Take(samples, reference)


def measure_latency(runners: Mapping[str, Runner], batches: Sequence[int], blocks: int, reference: str | None = None,
                    *, limit: float = NOISE_LIMIT, retakes: int = RETAKES, block_s: float = BLOCK_S,
                    warmup_s: float = WARMUP_S, clock: Callable[[], float] | None = None) -> Latency:
    """Time every runner at each batch size in the same interleaved blocks (see the module docstring).

    Args:
        runners: name -> Runner (e.g. torch_runner, or an ONNX Runtime session's).
        batches: batch sizes, each measured on its own (duplicates are measured once).
        blocks: blocks per take: the samples of each median and IQR.
        reference: the name every other runner's ratio is taken against (none if absent from `runners`).
        limit: IQR/median above which a take is re-taken, at most `retakes` times; the least spread take is kept.
        block_s, warmup_s: least time of a model in one block, and of its warm-up.
        clock: seconds; default_clock() unless given (tests pass a fake one).

    Returns:
        Latency: per batch the kept Take, the takes it needed, the names still noisy, threads and blocks.
    """
    if blocks < 1:
        raise ValueError(f"blocks must be >= 1, got {blocks}")
    clock = clock or default_clock()
    kept, attempts, noisy = {}, {}, set()
    for b in dict.fromkeys(batches):
        calls = {name: runner(b) for name, runner in runners.items()}
        counts = {name: max(1, min(MAX_CALLS, math.ceil(block_s / max(warm_up(call, warmup_s, clock), 1e-9))))
                  for name, call in calls.items()}
        takes = [take_once(calls, counts, blocks, reference, clock)]
        while takes[-1].worst > limit and len(takes) <= retakes:
            takes.append(take_once(calls, counts, blocks, reference, clock))
        kept[b], attempts[b] = min(takes, key=lambda t: t.worst), len(takes)
        noisy |= kept[b].noisy(limit)
    clock_name = {time.thread_time: "thread_cpu", time.perf_counter: "wall"}.get(clock, getattr(clock, "__name__", "?"))
    return Latency(kept, attempts, frozenset(noisy), torch.get_num_threads(), blocks, clock_name)


def torch_runner(model: nn.Module, input_shape: tuple[int, ...]) -> Runner:
    """Forward passes of `model` as it is (call under torch.inference_mode, on the CPU: see time_models)."""

    def at(batch: int) -> Callable[[], object]:
        x = example_input(model, input_shape, batch, random=True)  # token ids for a text model
        return lambda: model(x)

    return at


def cpu_eval_copy(model: nn.Module) -> nn.Module:
    """A CPU copy in eval mode: timing or exporting must not move or switch the caller's (maybe still training)
    model."""
    return copy.deepcopy(model).cpu().eval()


@torch.inference_mode()
def time_models(models: Mapping[str, nn.Module], input_shape: tuple[int, ...], batches: Sequence[int], blocks: int,
                reference: str | None = "teacher", **options) -> Latency:
    """measure_latency of torch models on the CPU, in eval mode, with torch's current thread count.

    Args:
        models: name -> model (copied to the CPU first).
        input_shape: one sample's shape (C, H, W).
        batches, blocks, reference, options: as measure_latency.

    Returns:
        Latency (see measure_latency).
    """
    return measure_latency({n: torch_runner(cpu_eval_copy(m), input_shape) for n, m in models.items()}, batches, blocks,
                           reference, **options)
