"""Feature methods with the teacher online vs its outputs cached, keeping only the levels a method reads.

AB and ReviewKD pair the deepest stages of both nets. While the cache kept every level, cnn_medium's feature
maps of the full Fashion-MNIST train set (8.5 GB for AB, 17 GB for ReviewKD) exceeded teacher_cache.max_gb
and the teacher ran every step; kept to the paired levels they are 1.6 GB. This times one epoch of kdexp's
fit per (student, method, mode), interleaved, on one thread (how fashion_full runs its cells), and the
one-off fill.
    python benchmarks/feature_cache.py            # cnn_medium -> cnn_tiny, cnn_lean; 10,000 images
    python benchmarks/feature_cache.py --quick    # smoke run
Results: outputs/bench/feature_cache[_quick].{json,md}.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `benchmarks` and `kdexp` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from benchmarks.common import REPO, interleaved, loadavg, machine, md_table, write_results
from benchmarks.kd_epoch import build, context, fashion, frozen_teacher
from kdexp.caching.teacher_outputs import estimated_bytes, prepare_cached_teacher, wanted_outputs
from kdexp.distill import create_method
from kdexp.modules.distill import DistillModule
from kdexp.training.context import quiet_lightning
from kdexp.training.trainer import fit

FULL_TRAIN = 54_000  # fashion_full's train split: what the cache would hold there


def student_and_method(dm, teacher, student_arch: str, method_name: str):
    student = build(student_arch)
    method = create_method(method_name)
    method.build(student.feature_shapes(dm.input_shape), teacher.feature_shapes(dm.input_shape),
                 dm.num_classes, dm.num_train)
    return student, method


def epoch_case(dm, teacher, student_arch: str, method_name: str, mode: str, cache_root: Path):
    """One epoch of a method's main-stage training, teacher online or looked up (a fresh run: loads the file)."""
    def run() -> None:
        quiet_lightning()
        student, method = student_and_method(dm, teacher, student_arch, method_name)
        weights = {"ce": 1.0, **{term: 1.0 for term in method.terms}}
        module = DistillModule(student, teacher=teacher, method=method, weights=weights, max_epochs=1,
                               metric_sink=lambda metrics, epoch: None)
        fit(context(dm, 1, mode, cache_root), module, 1)
        assert (module.teacher_store is not None) == (mode == "cached")
    return run


def sizes_gb(dm, teacher, method) -> tuple[float, float]:
    """The cache entry at fashion_full's size: every level vs the levels the method reads."""
    levels = method.teacher_levels()
    every = estimated_bytes(teacher, dm, wanted_outputs(method.needs, True), FULL_TRAIN)
    kept = estimated_bytes(teacher, dm, wanted_outputs(method.needs, True, levels), FULL_TRAIN, levels)
    return every / 2**30, kept / 2**30


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=REPO / "outputs" / "bench")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    limit, repeats = (512, 1) if args.quick else (10_000, 3)
    students = ("cnn_tiny",) if args.quick else ("cnn_tiny", "cnn_lean")
    dm, teacher = fashion(limit), frozen_teacher("cnn_medium")
    res = {"machine": machine(), "threads": args.threads, "train_samples": dm.num_train, "load_before": loadavg(),
           "rows": []}
    with tempfile.TemporaryDirectory() as tmp:
        cache_root = Path(tmp)
        for student_arch in students:
            for method_name in ("ab", "reviewkd"):
                _, method = student_and_method(dm, teacher, student_arch, method_name)
                start = time.perf_counter()  # the one-off fill, as the first cached run of a matrix pays it
                prepare_cached_teacher({"mode": "on"}, dm, teacher, method.needs, True,
                                       cache_root / "teacher_outputs", levels=method.teacher_levels())
                fill_s = time.perf_counter() - start
                cases = {mode: epoch_case(dm, teacher, student_arch, method_name, mode, cache_root)
                         for mode in ("online", "cached")}
                timing = interleaved(cases, repeats, warmup=not args.quick)
                every_gb, kept_gb = sizes_gb(dm, teacher, method)
                online, cached = timing["online"]["wall_median_s"], timing["cached"]["wall_median_s"]
                res["rows"].append({"student": student_arch, "method": method_name, "online_s": online,
                                    "cached_s": cached, "speedup": online / cached, "fill_s": fill_s,
                                    "every_level_gb": every_gb, "kept_gb": kept_gb, "timing": timing})
    res["load_after"] = loadavg()
    md = (f"One epoch of {dm.num_train:,} Fashion-MNIST images, teacher cnn_medium, batch 128, {args.threads} "
          f"thread(s), median of {repeats}; {res['machine']['cpu']}, load {res['load_before']} -> "
          f"{res['load_after']}. GB: the cache entry for fashion_full's {FULL_TRAIN:,} train images.\n\n"
          + md_table(["student", "method", "online s", "cached s", "speed-up", "fill s", "every level GB",
                      "kept levels GB"],
                     [[r["student"], r["method"], round(r["online_s"], 2), round(r["cached_s"], 2),
                       round(r["speedup"], 2), round(r["fill_s"], 2), round(r["every_level_gb"], 2),
                       round(r["kept_gb"], 2)] for r in res["rows"]]))
    write_results(args.out, "feature_cache" + ("_quick" if args.quick else ""), res, md)
    print(md)


if __name__ == "__main__":
    main()
