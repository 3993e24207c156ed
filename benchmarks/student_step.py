"""Where a tiny student's training step goes on a CPU, and what was tried to shorten it.

    python benchmarks/student_step.py          # 2 min here
    python benchmarks/student_step.py --quick  # smoke run

A cached teacher can make a KD sweep at most (teacher forward + student step) / student step faster, so
the student's step bounds the sweep's speed-up. Times one cnn_tiny step (forward, cross-entropy, backward,
Adam) at batch 128 on 28x28 inputs, the default Fashion-MNIST pair's teacher forward, the ops that take
the step's time (torch profiler), and each variant of the step. Results: outputs/bench/student_step[_quick].{json,md}.
"""

from __future__ import annotations

import argparse
import sys
from functools import partial
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `benchmarks` and `kdexp` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.common import REPO, loadavg, machine, md_table, median_ms, write_results
from kdexp.models import create_model
from kdexp.modules.optim import build_optimizer

BATCH, SIZE = 128, 28
ADAM = {"optimizer": "adam", "lr": 1e-3}


def student_step(model: nn.Module | None = None, batch: int = BATCH, channels_last: bool = False,
                 compiled: bool = False, copies: int = 1):
    """A closure running one training step; `copies` > 1 trains that many outputs' losses at once."""
    torch.manual_seed(0)
    model = model or create_model("cnn_tiny", num_classes=10, in_channels=1)
    x, y = torch.randn(batch, 1, SIZE, SIZE), torch.randint(0, 10, (batch,))
    if channels_last:
        model, x = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    opt = build_optimizer(list(model.parameters()), ADAM, 1)
    forward = torch.compile(model) if compiled else model
    target = y.repeat(copies)

    def step() -> None:
        loss = F.cross_entropy(forward(x).reshape(-1, 10), target) * copies
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


class GroupedStudents(nn.Module):
    """K cnn_tiny-shaped students as one model: a shared-input stem, grouped convs, a batched head."""

    def __init__(self, k: int):
        super().__init__()
        self.k = k

        def cbr(i, o, stride, groups):
            return [nn.Conv2d(i, o, 3, stride, 1, groups=groups, bias=False), nn.BatchNorm2d(o), nn.ReLU()]

        self.features = nn.Sequential(*cbr(1, 8 * k, 1, 1), *cbr(8 * k, 16 * k, 2, k), *cbr(16 * k, 32 * k, 2, k),
                                      nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.weight, self.bias = nn.Parameter(torch.randn(k, 32, 10) * 0.1), nn.Parameter(torch.zeros(k, 10))

    def forward(self, x):
        h = self.features(x).view(-1, self.k, 32).transpose(0, 1)
        return torch.baddbmm(self.bias[:, None], h, self.weight)  # (k, B, 10)


def teacher_forward(arch: str = "cnn_medium"):
    teacher = create_model(arch, num_classes=10, in_channels=1).eval()
    x = torch.randn(BATCH, 1, SIZE, SIZE)

    def forward() -> None:
        with torch.no_grad():
            teacher(x)

    return forward


def op_breakdown(step, steps: int = 10) -> list[tuple[str, float]]:
    """ms per step by aten op (self time), largest first."""
    from torch.profiler import profile

    step()
    with profile() as prof:
        for _ in range(steps):
            step()
    rows = [(e.key, e.self_cpu_time_total / 1e3 / steps) for e in prof.key_averages() if e.key.startswith("aten::")]
    return sorted(rows, key=lambda r: -r[1])[:8]


def with_threads(n: int, fn):
    """fn, run on n intra-op threads."""
    def run():
        before = torch.get_num_threads()
        torch.set_num_threads(n)
        try:
            return fn()
        finally:
            torch.set_num_threads(before)
    return run


def without_mkldnn(fn):
    """fn, run with oneDNN's convolutions off."""
    def run():
        before = torch.backends.mkldnn.enabled
        torch.backends.mkldnn.enabled = False
        try:
            return fn()
        finally:
            torch.backends.mkldnn.enabled = before
    return run


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", type=Path, default=REPO / "outputs" / "bench")
    args = p.parse_args()
    reps, rounds = (3, 1) if args.quick else (30, 3)
    res = {"machine": machine(), "load_before": loadavg()}
    steps = {  # name -> (closure, samples per call / 128[, intra-op threads])
        "default (NCHW, oneDNN)": (student_step(), 1),
        "channels_last": (student_step(channels_last=True), 1),
        "oneDNN off (native convolutions)": (without_mkldnn(student_step()), 1),
        "batch 512, per 128 samples": (student_step(batch=512), 4),
        "1 thread": (student_step(), 1, 1),
    }
    if not args.quick:
        steps["torch.compile (inductor)"] = (student_step(compiled=True), 1)
        for k in (1, 2, 4, 8):
            steps[f"{k} student(s) as one grouped model, per student"] = (student_step(GroupedStudents(k), copies=k), k)
    times: dict[str, list[float]] = {name: [] for name in steps}
    for r in range(rounds):  # alternate the order: a load change hits every case alike
        for name in steps if r % 2 == 0 else reversed(steps):
            fn, per, *threads = steps[name]
            measure = partial(median_ms, fn, reps)
            times[name].append((with_threads(threads[0], measure)() if threads else measure()) / per)
    res["step_ms"] = {name: min(t) for name, t in times.items()}
    base = res["step_ms"]["default (NCHW, oneDNN)"]
    res["teacher_forward_ms"] = median_ms(teacher_forward(), reps)
    res["teacher_forward_1_thread_ms"] = median_ms(with_threads(1, teacher_forward()), reps)
    res["ops_ms"] = op_breakdown(student_step())
    res["load_after"] = loadavg()
    bound = (res["teacher_forward_ms"] + base) / base
    res["sweep_speedup_bound"] = bound
    md = "\n\n".join([
        f"cnn_tiny training step, batch {BATCH}, {SIZE}x{SIZE}, Adam; {res['machine']['cpu']}, "
        f"{res['machine']['cores']} cores, {res['machine']['torch_threads']} threads, load {res['load_before']} -> "
        f"{res['load_after']}",
        md_table(["step", "ms per 128 samples", "vs default"],
                 [[k, round(v, 2), round(v / base, 2)] for k, v in res["step_ms"].items()]),
        md_table(["op (self time)", "ms per step"], [[k, round(v, 2)] for k, v in res["ops_ms"]]),
        f"cnn_medium forward (no grad): {res['teacher_forward_ms']:.1f} ms on 2 threads, "
        f"{res['teacher_forward_1_thread_ms']:.1f} ms on 1. Bound on a cached sweep's speed-up, "
        f"(teacher forward + student step) / student step: {bound:.2f}",
    ])
    write_results(args.out, "student_step" + ("_quick" if args.quick else ""), res, md)
    print(md)


if __name__ == "__main__":
    main()
