"""Where a KD run's time goes on this machine, as ratios measured within one run.

    python benchmarks/loop_overhead.py           # the figures in benchmarks/README.md (~10 min on 2 idle cores)
    python benchmarks/loop_overhead.py --quick   # smoke run: small data, 1 repeat (~1-2 min)

Sections: framework overhead (kdexp fit vs a hand-written loop, per teacher mode), teacher online vs
cached, a 20-trial sweep, the data path, start-up, and how epoch time grows with data and teacher size.
Repeats alternate their order (ABC, CBA, ...) and report medians; the load average is recorded, since
the machine may be shared. Results: outputs/bench/loop_overhead.{json,md} and a table on stdout.
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

from benchmarks.common import REPO, interleaved, loadavg, machine, md_table, timed, write_results
from benchmarks.data_path import measure_data_path
from benchmarks.kd_epoch import (
    MODES,
    ManualOptimization,
    build,
    cached_logits,
    fashion,
    frozen_teacher,
    kdexp_run,
    plain_run,
)
from benchmarks.startup import measure_startup


def framework_overhead(dm, teacher, epochs: int, repeats: int, cache: Path, manual: bool) -> dict:
    logits = cached_logits(dm, teacher, cache)  # filled once, untimed: both sides then use it
    cases = {}
    for mode in MODES:
        cases[f"kdexp {mode}"] = lambda mode=mode: kdexp_run(dm, teacher, mode, epochs, cache)
        cases[f"plain {mode}"] = lambda mode=mode: plain_run(dm, teacher, mode, epochs, logits)
    if manual:
        cases["kdexp cached, manual optimization"] = lambda: kdexp_run(
            dm, teacher, "cached", epochs, cache, module_cls=ManualOptimization)
    res = interleaved(cases, repeats, warmup=True)
    n = dm.num_train * epochs
    for r in res.values():
        r["samples_per_s"] = n / r["wall_median_s"]
    summary = {f"kdexp/plain {m}": res[f"kdexp {m}"]["wall_median_s"] / res[f"plain {m}"]["wall_median_s"]
               for m in MODES}
    summary.update({f"kdexp/plain {m} (CPU time)": res[f"kdexp {m}"]["cpu_median_s"] / res[f"plain {m}"]["cpu_median_s"]
                    for m in MODES})
    summary["kdexp cached / kdexp none"] = res["kdexp cached"]["wall_median_s"] / res["kdexp none"]["wall_median_s"]
    summary["kdexp online / kdexp cached"] = res["kdexp online"]["wall_median_s"] / res["kdexp cached"]["wall_median_s"]
    summary["plain online: teacher share of the step"] = (
        1 - res["plain none"]["wall_median_s"] / res["plain online"]["wall_median_s"])
    if manual:
        summary["manual / automatic optimization"] = (res["kdexp cached, manual optimization"]["wall_median_s"]
                                                      / res["kdexp cached"]["wall_median_s"])
    return {"epochs": epochs, "num_train": dm.num_train, "cases": res, "summary": summary}


OPTIONS = {
    "defaults (conf/trainer/default.yaml)": {},
    "enable_progress_bar=true": {"enable_progress_bar": True},
    "precision=bf16-mixed": {"precision": "bf16-mixed"},
    "channels_last=true": {"channels_last": True},
}


def trainer_options(dm, teacher, epochs: int, repeats: int, cache: Path, compile_too: bool) -> dict:
    """A cached-teacher KD fit under each Trainer/kdexp switch, relative to the defaults."""
    options = {**OPTIONS, **({"compile=true": {"compile": True}} if compile_too else {})}
    cached_logits(dm, teacher, cache)
    res = interleaved({name: lambda o=o: kdexp_run(dm, teacher, "cached", epochs, cache, **o)
                       for name, o in options.items()}, repeats, warmup=True)
    base = res["defaults (conf/trainer/default.yaml)"]["wall_median_s"]
    return {"epochs": epochs, "num_train": dm.num_train,
            "rows": {k: {"wall_median_s": v["wall_median_s"], "relative": v["wall_median_s"] / base}
                     for k, v in res.items()}}


def sweep(dm, teacher, trials: int, epochs: int) -> dict:
    """`trials` student trainings in one process (distill.temperature varies), cached vs online teacher;
    the cached side also pays the one-off fill (into an empty cache)."""
    with tempfile.TemporaryDirectory() as cache:
        fill_s, _, _ = timed(lambda: cached_logits(dm, teacher, cache))
        online, cached = [], []
        for i in range(trials):  # alternate trial by trial: load changes hit both sides
            temperature = 1.0 + 7.0 * i / max(1, trials - 1)
            for mode, times in (("online", online), ("cached", cached))[:: 1 if i % 2 == 0 else -1]:
                wall, _, _ = timed(lambda mode=mode, i=i, t=temperature: kdexp_run(dm, teacher, mode, epochs, cache,
                                                                                    seed=i, temperature=t))
                times.append(wall)
    total_cached = fill_s + sum(cached)
    arch = getattr(teacher, "arch_name", type(teacher).__name__)
    return {"teacher": arch, "trials": trials, "epochs_per_trial": epochs, "num_train": dm.num_train, "fill_s": fill_s,
            "online_s": sum(online), "cached_s_including_fill": total_cached, "speedup": sum(online) / total_cached,
            "online_trial_s": online, "cached_trial_s": cached}


def scaling(limits: list[int], teachers: list[str], teacher_limit: int, epochs: int) -> dict:
    """Epoch time (and fill time) versus data-set size (cnn_medium) and versus teacher size."""
    rows = []
    points = [(n, "cnn_medium") for n in limits] + [(teacher_limit, a) for a in teachers if a != "cnn_medium"]
    points += [(teacher_limit, "cnn_medium")] if teacher_limit not in limits else []
    for limit, arch in points:
        dm, teacher = fashion(limit), frozen_teacher(arch)
        with tempfile.TemporaryDirectory() as cache:
            fill_s, _, _ = timed(lambda dm=dm, teacher=teacher: cached_logits(dm, teacher, cache))
            res = interleaved({m: lambda m=m, dm=dm, teacher=teacher: kdexp_run(dm, teacher, m, epochs, cache)
                               for m in MODES}, 1)
        n = dm.num_train * epochs
        rows.append({"teacher": arch, "teacher_params": sum(p.numel() for p in teacher.parameters()),
                     "num_train": dm.num_train, "fill_s": fill_s,
                     **{f"{m}_epoch_s": res[m]["wall_median_s"] / epochs for m in MODES},
                     **{f"{m}_samples_per_s": n / res[m]["wall_median_s"] for m in MODES}})
    return {"epochs": epochs, "rows": rows}


def report(results: dict) -> str:
    m, out = results["machine"], []
    out.append(f"Machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']} ({m['torch_threads']} threads). "
               f"Load average before/after: {results['load_before']} / {results['load_after']}. "
               f"Command: `{results['command']}`; total {results['total_s']:.0f}s.")
    sections = results.get("load_by_section", {})
    out.append("Load average after each section: " + "; ".join(f"{k} {v}" for k, v in sections.items()))
    fo = results.get("framework_overhead")
    if fo:
        reps = len(next(iter(fo["cases"].values()))["wall_s"])
        out.append(f"\n### Framework overhead and teacher modes ({fo['num_train']} train samples, {fo['epochs']} "
                   f"epoch(s), batch 128, median of {reps})")
        cases = [[k, v["wall_median_s"], v["cpu_median_s"], v["samples_per_s"]] for k, v in fo["cases"].items()]
        out.append(md_table(["case", "wall s", "CPU s", "samples/s"], cases))
        out.append(md_table(["ratio", "value"], [[k, v] for k, v in fo["summary"].items()]))
    op = results.get("trainer_options")
    if op:
        out.append(f"\n### Trainer switches (cached-teacher KD fit, {op['num_train']} samples, "
                   f"{op['epochs']} epoch(s))")
        out.append(md_table(["setting", "wall s", "relative to defaults"],
                            [[k, v["wall_median_s"], v["relative"]] for k, v in op["rows"].items()]))
    for sw in results.get("sweeps", {}).values():
        out.append(f"\n### Sweep: {sw['trials']} student trainings in one process, teacher {sw['teacher']} "
                   f"({sw['epochs_per_trial']} epoch(s), {sw['num_train']} train samples)")
        out.append(md_table(["online teacher s", "cached s (incl. fill)", "one-off fill s", "speed-up"],
                            [[sw["online_s"], sw["cached_s_including_fill"], sw["fill_s"], sw["speedup"]]]))
    dp = results.get("data_path")
    if dp:
        out.append(f"\n### Data path ({dp['num_train']} train samples, batch 128)")
        out.append(md_table(["pipeline", "loader", "iterate samples/s", "student epoch samples/s"],
                            [[k, v["loader_type"], v["iterate_samples_per_s"], v.get("train_epoch_samples_per_s", "")]
                             for k, v in dp["pipelines"].items()]))
    st = results.get("startup")
    if st:
        out.append(f"\n### Start-up (`kdexp-train {' '.join(st['overrides'])}`, caches warm)")
        out.append(md_table(["milestone", "s from launch"], [[k, v] for k, v in st["milestones_s"].items()]))
        out.append(f"To the first student step: {st['to_first_step_s']:.1f}s of a {st['trial_s']:.1f}s trial "
                   f"({100 * st['startup_fraction_of_trial']:.0f}%), of which {st['setup_after_imports_s']:.1f}s "
                   "after the imports (a fresh process; later trials of an in-process sweep reuse its data and "
                   "evaluations).")
        out.append(md_table(["import", "s (fresh interpreter)"], [[k, v] for k, v in st["imports_s"].items()]))
    sc = results.get("scaling")
    if sc:
        out.append(f"\n### Scaling ({sc['epochs']} epoch(s) each; samples/s of a kdexp fit)")
        out.append(md_table(["teacher", "params", "train samples", "fill s", "none", "online", "cached"],
                            [[r["teacher"], r["teacher_params"], r["num_train"], r["fill_s"], r["none_samples_per_s"],
                              r["online_samples_per_s"], r["cached_samples_per_s"]] for r in sc["rows"]]))
    return "\n".join(out)


SECTIONS = ("framework", "sweep", "data", "startup", "scaling")


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small data, 1 repeat: a smoke run")
    p.add_argument("--repeats", type=int, help="alternating repetitions per case (default 3; quick 1)")
    p.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    p.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}")
    p.add_argument("--compile", action="store_true", help="also time trainer.compile=true (minutes to compile on CPU)")
    p.add_argument("--out", type=Path, default=REPO / "outputs" / "bench")
    args = p.parse_args(argv)
    sections = set(args.sections.split(","))
    if args.threads:
        torch.set_num_threads(args.threads)
    q = args.quick
    repeats = args.repeats or (1 if q else 3)
    start = time.perf_counter()
    results = {"machine": machine(), "load_before": loadavg(), "quick": q, "load_by_section": {},
               "command": "python benchmarks/loop_overhead.py " + " ".join(argv if argv is not None else sys.argv[1:])}

    def done(section: str) -> None:
        results["load_by_section"][section] = loadavg()
        print(f"{section} done (load {loadavg()})", flush=True)

    dm, teacher = fashion(1000 if q else 10000), frozen_teacher("cnn_medium")
    if "framework" in sections:
        with tempfile.TemporaryDirectory() as cache:
            results["framework_overhead"] = framework_overhead(dm, teacher, 1 if q else 2, repeats, Path(cache),
                                                               manual=not q)
            results["trainer_options"] = trainer_options(dm, teacher, 1, repeats, Path(cache), args.compile)
        done("framework")
    if "sweep" in sections:
        # the default pair, and a teacher whose forward pass dominates more (resnet8x4: 1.2M params)
        results["sweeps"] = {"cnn_medium": sweep(fashion(1000 if q else 20000), teacher, 3 if q else 20, 1)}
        if not q:
            results["sweeps"]["resnet8x4"] = sweep(fashion(5000), frozen_teacher("resnet8x4"), 20, 1)
        done("sweep")
    if "data" in sections:
        augmented = fashion(dm.limit, augment=True)
        results["data_path"] = measure_data_path(dm, augmented, lambda: build("cnn_tiny"), repeats)
        done("data")
    if "startup" in sections:
        overrides = ["experiment=fashion_cnn"] + (["trainer.max_epochs=1", "data.limit=2000"] if q else [])
        results["startup"] = measure_startup(REPO / "outputs" / "bench" / "work" / "startup", overrides, 1 if q else 2)
        done("startup")
    if "scaling" in sections:
        limits = [500, 1000] if q else [2500, 5000, 10000, 20000]
        teachers = ["cnn_small", "cnn_medium"] + ([] if q else ["resnet8x4"])
        results["scaling"] = scaling(limits, teachers, 1000 if q else 5000, 1)
        done("scaling")
    results["load_after"], results["total_s"] = loadavg(), time.perf_counter() - start
    markdown = report(results)
    name = "loop_overhead" + ("_quick" if q else "") + (f"_threads{args.threads}" if args.threads else "")
    write_results(args.out, name, results, markdown)
    print(markdown)
    return results


if __name__ == "__main__":
    main()
