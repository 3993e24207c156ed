"""CRD's two ways of scoring a batch against its memory bank, per training step (forward + backward).

    python benchmarks/crd_scores.py          # 10k and 50k samples, 16384 negatives (clamped), batch 128
    python benchmarks/crd_scores.py --quick  # smoke run

"gathered": memory[idx] as a (B, 1 + k, feat_dim) tensor, then a batched product (RepDistiller's way);
"whole bank": one (B, feat_dim) x (feat_dim, N) GEMM, then a gather of the (B, 1 + k) scores. CRD picks
the second when 1 + k >= N / DENSE_FRACTION. Same numbers (tests/distill/test_distill_crd.py runs both).
"shared" (crd.shared_negatives, a different estimator): one draw of k entries for the whole batch, a
(B, feat_dim) x (feat_dim, k) product, own-sample and same-class entries masked per row.
Also times drawing the negatives: the previous sampler (whole-block redraws) against CRD.sample_indices.
Results: outputs/bench/crd_scores[_quick].{json,md}.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `benchmarks` and `kdexp` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

import kdexp.distill.crd as crd
from benchmarks.common import REPO, loadavg, machine, md_table, write_results
from kdexp.distill import create_method
from kdexp.models.base import FeatureOutput

PATHS = ("gathered", "whole bank", "shared")


def step_seconds(num_samples: int, path: str, batch: int, negatives: int, repeats: int) -> float:
    """Median seconds of one CRD step on `path`, forced (per-sample draws) or chosen (shared draws)."""
    if path not in PATHS:
        raise ValueError(f"path={path!r} is not one of: {', '.join(PATHS)}")
    saved = crd.DENSE_FRACTION
    crd.DENSE_FRACTION = num_samples if path == "whole bank" else 0  # num_samples: always the whole bank; 0: never
    try:
        return _median_step(num_samples, batch, negatives, repeats, shared=path == "shared")
    finally:
        crd.DENSE_FRACTION = saved


def _median_step(num_samples: int, batch: int, negatives: int, repeats: int, shared: bool = False) -> float:
    torch.manual_seed(0)
    method = create_method("crd", num_negatives=negatives, shared_negatives=shared)
    emb_s, emb_t = torch.randn(batch, 64), torch.randn(batch, 256)
    method.build(FeatureOutput(torch.zeros(batch, 10), [], [], emb_s),
                 FeatureOutput(torch.zeros(batch, 10), [], [], emb_t),
                 10, num_samples)
    y = torch.randint(0, 10, (batch,))

    def step() -> None:
        s = FeatureOutput(torch.zeros(batch, 10), [], [], emb_s.clone().requires_grad_(True))
        t = FeatureOutput(torch.zeros(batch, 10), [], [], emb_t)
        method(s, t, y, torch.randint(0, num_samples, (batch,)), 0)["crd"].backward()

    step(), step()  # warm-up, and Z fixed
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def whole_block_redraw(method, index: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The previous CRD sampler, for comparison: redraw the whole (B, k) block three times, keeping fresh
    draws only where the old ones hit the anchor's class."""
    def draw() -> torch.Tensor:
        neg = torch.randint(0, method.num_samples - 1, (index.shape[0], method.k))
        return neg + (neg >= index[:, None]).long()

    neg = draw()
    for _ in range(3):
        neg = torch.where(method.labels[neg] == target[:, None], draw(), neg)
    return torch.cat([index[:, None], neg], dim=1)


def sampling_seconds(num_samples: int, negatives: int, batch: int, repeats: int) -> dict[str, float]:
    """Median seconds to draw one batch's negatives, previous sampler vs CRD.sample_indices (10 classes known)."""
    method = create_method("crd", num_negatives=negatives)
    emb = FeatureOutput(torch.zeros(batch, 10), [], [], torch.randn(batch, 64))
    method.build(emb, emb, 10, num_samples)
    method.labels.copy_(torch.randint(0, 10, (num_samples,)))
    index, target = torch.randint(0, num_samples, (batch,)), torch.randint(0, 10, (batch,))
    out: dict[str, list[float]] = {"previous": [], "current": []}
    for _ in range(repeats):
        for name, fn in (("previous", whole_block_redraw), ("current", type(method).sample_indices)):
            start = time.perf_counter()
            fn(method, index, target)
            out[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in out.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", type=Path, default=REPO / "outputs" / "bench")
    args = p.parse_args()
    sizes, repeats = ((2000,), 2) if args.quick else ((10000, 50000), 7)
    res = {"machine": machine(), "load_before": loadavg(), "rows": []}
    for n in sizes:
        k = min(16384, n - 1)
        best = {}
        for path in (*PATHS, *PATHS):  # alternate rounds: load hits every path
            best.setdefault(path, []).append(step_seconds(n, path, 128, 16384, repeats))
        gathered, whole, shared = (min(best[p]) for p in PATHS)
        sampling = sampling_seconds(n, 16384, 128, repeats * 2)
        res["rows"].append({"num_samples": n, "negatives": k, "gathered_ms": 1e3 * gathered,
                            "whole_bank_ms": 1e3 * whole, "speedup": gathered / whole, "shared_ms": 1e3 * shared,
                            "sampling_previous_ms": 1e3 * sampling["previous"],
                            "sampling_ms": 1e3 * sampling["current"]})
    res["load_after"] = loadavg()
    md = (f"CRD step (forward + backward of the CRD term, batch 128, feat_dim 128), {res['machine']['cpu']}, "
          f"{res['machine']['cores']} cores, load {res['load_before']} -> {res['load_after']}\n\n"
          + md_table(["train samples", "negatives", "gathered ms", "whole bank ms", "speed-up", "shared ms",
                      "whole bank / shared"],
                     [[r["num_samples"], r["negatives"], round(r["gathered_ms"], 1), round(r["whole_bank_ms"], 1),
                       round(r["speedup"], 2), round(r["shared_ms"], 1), round(r["whole_bank_ms"] / r["shared_ms"], 2)]
                      for r in res["rows"]])
          + "\n\nDrawing the negatives (labels known), previous sampler vs the current one:\n\n"
          + md_table(["train samples", "previous ms", "current ms", "speed-up"],
                     [[r["num_samples"], round(r["sampling_previous_ms"], 1), round(r["sampling_ms"], 1),
                       round(r["sampling_previous_ms"] / r["sampling_ms"], 2)] for r in res["rows"]]))
    write_results(args.out, "crd_scores" + ("_quick" if args.quick else ""), res, md)
    print(md)


if __name__ == "__main__":
    main()
