"""What median pruning saves in a KD sweep, what the teacher-output cache saves, and what a sweep costs
besides training.

    python benchmarks/sweep_pruning.py          # 2 x 20 trials of sweeps/kd_temperature.yaml, Fashion-MNIST
    python benchmarks/sweep_pruning.py --quick  # smoke run: 2 x 6 trials on synthetic 8x8 data (~1-2 min)
    python benchmarks/sweep_pruning.py --compare teacher-cache  # unpruned, cached vs online teacher

The same `kdexp-train -m +sweep=kd_temperature` study (TPE, same sampler seed) runs twice: with the file's
median pruner and with `pruner.name=none`. The teacher is trained and cached beforehand (a 1-epoch single
run; not with --quick), so neither sweep pays for it. Each sweep is the real CLI in a child process that
times kdexp's `fit` and `evaluate` calls; per trial, epochs trained = the Optuna intermediate values it
reported (one per validation epoch).

Sweeper overhead (time not spent training the student), two ways:
  - per trial: Optuna trial duration (ask -> tell, the job included) minus the student's `fit` time;
  - per sweep: (process wall time - all `fit` time) / trials, i.e. also start-up, study, parent run, plots.
Both include the per-trial evaluation (teacher and student: test split, latency), reported separately.
Results: outputs/bench/sweep_pruning[_quick].{json,md}.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `benchmarks` and `kdexp` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import REPO, loadavg, machine, md_table, write_results

FULL = {
    "trials": 20, "epochs": 6,
    "overrides": ["data.limit=3000", "teacher.max_epochs=5"],  # the file's Fashion-MNIST pair, smaller
}
QUICK = {
    "trials": 6, "epochs": 3,
    "overrides": ["data=synthetic", "data.num_samples=300", "data.image_size=8", "teacher=cnn_small",
                  "teacher.max_epochs=3", "eval.latency_repeats=2", "eval.latency_batch=8",
                  "hydra.sweeper.pruner.n_startup_trials=2", "hydra.sweeper.pruner.n_warmup_steps=0"],
}
EXPERIMENT = "bench-sweep-pruning"


def child(out: Path, overrides: list[str]) -> None:
    """One sweep through the real CLI entry point, in this process, with kdexp's fit/evaluate timed."""
    import kdexp.training.alone as alone
    import kdexp.training.distilled as distilled
    import kdexp.training.results as results
    from kdexp import cli
    from kdexp.training.evaluation import evaluate
    from kdexp.training.trainer import fit

    calls: list[dict] = []

    def timed(fn, kind):
        def wrapper(ctx, *args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(ctx, *args, **kwargs)
            finally:  # pruned fits raise: they count too
                trial = (ctx.conf.get("optuna_trial") or {}).get("trial_number")
                calls.append({"kind": kind, "trial": trial, "s": time.perf_counter() - start})
        return wrapper

    # each module imported these by name: patch the student's stages apart from the models trained alone.
    distilled.fit = timed(fit, "student_fit")
    distilled.evaluate = results.evaluate = timed(evaluate, "evaluate")
    alone.fit = timed(fit, "alone_fit")
    sys.argv = ["kdexp-train", "-m", *overrides]
    code = 0
    try:
        cli.train()
    except SystemExit as exc:
        code = exc.code or 0
    finally:
        out.write_text(json.dumps(calls))
    sys.exit(code)


def run_cli(args: list[str], log: Path) -> float:
    start = time.perf_counter()
    with open(log, "w") as handle:
        proc = subprocess.run(args, cwd=REPO, stdout=handle, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(args[:3])} ... failed (exit {proc.returncode}); see {log}")
    return wall


def sweep(name: str, common: list[str], extra: list[str], work: Path, settings: dict) -> dict:
    import optuna
    from mlflow import MlflowClient

    calls_file = work / f"{name}.calls.json"
    study_name = f"bench-{name}"
    args = [*common, f"hydra.sweeper.study_name={study_name}", f"hydra.sweeper.n_trials={settings['trials']}",
            *extra]
    load_before = loadavg()
    me = [sys.executable, str(Path(__file__).resolve())]
    wall = run_cli([*me, "--child", str(calls_file), "--", *args], work / f"{name}.log")
    calls = json.loads(calls_file.read_text())
    study = optuna.load_study(study_name=study_name, storage=f"sqlite:///{work / 'optuna.db'}")
    fit_by_trial: dict[int, float] = {}
    for c in calls:
        if c["kind"] == "student_fit":
            fit_by_trial[c["trial"]] = fit_by_trial.get(c["trial"], 0.0) + c["s"]
    per_trial = []
    for t in study.trials:
        duration = (t.datetime_complete - t.datetime_start).total_seconds()
        per_trial.append({"number": t.number, "state": t.state.name, "epochs": len(t.intermediate_values),
                          "value": t.value, "params": t.params, "duration_s": duration,
                          "fit_s": fit_by_trial.get(t.number, 0.0)})
    total = {k: sum(c["s"] for c in calls if c["kind"] == k) for k in ("student_fit", "alone_fit",
                                                                        "evaluate")}
    epochs = sum(t["epochs"] for t in per_trial)
    best = study.best_trial
    client = MlflowClient(tracking_uri=f"sqlite:///{work / 'mlflow.db'}")
    exp = client.get_experiment_by_name(EXPERIMENT)
    best_run = client.search_runs([exp.experiment_id], filter_string=(
        f"tags.`optuna.study_name` = '{study_name}' AND tags.`optuna.trial_number` = '{best.number}' "
        "AND tags.`kdexp.role` = 'student'"))[0]
    n = len(per_trial)
    return {
        "trials": n, "pruned_trials": sum(t["state"] == "PRUNED" for t in per_trial),
        "failed_trials": sum(t["state"] == "FAIL" for t in per_trial),
        "student_epochs": epochs,
        "best_value": best.value, "best_trial": best.number, "best_params": best.params,
        "best_test_top1": best_run.data.metrics.get("student/test_top1"),
        "sweep_wall_s": wall, "fit_s": total["student_fit"], "alone_fit_s": total["alone_fit"],
        "evaluate_s": total["evaluate"],
        "overhead_per_trial_s": (wall - total["student_fit"] - total["alone_fit"]) / n,
        "trial_overhead_median_s": statistics.median(t["duration_s"] - t["fit_s"] for t in per_trial),
        "evaluate_per_trial_s": total["evaluate"] / n,
        "fit_per_epoch_s": total["student_fit"] / max(1, epochs),
        # Per-trial median: robust to a load burst during a few trials of one sweep.
        "fit_per_epoch_median_s": statistics.median(t["fit_s"] / t["epochs"] for t in per_trial
                                                    if t["epochs"]),
        "loadavg_before": load_before, "loadavg_after": loadavg(), "per_trial": per_trial,
    }


COMPARISONS = {  # name -> the two sweeps: (label, extra overrides)
    "pruning": (("pruned", []), ("unpruned", ["hydra.sweeper.pruner.name=none"])),
    "teacher-cache": (("cached", ["hydra.sweeper.pruner.name=none"]),
                      ("online", ["hydra.sweeper.pruner.name=none", "teacher_cache.mode=off"])),
}


def report(res: dict) -> str:
    s, runs = res["settings"], res["runs"]
    rows = []
    for name, r in runs.items():
        rows.append([name, f"{r['trials']} ({r['pruned_trials']} pruned)", r["student_epochs"],
                     round(r["best_value"], 4), round(r["best_test_top1"] or float("nan"), 4),
                     round(r["sweep_wall_s"]), round(r["fit_s"]), round(r["fit_per_epoch_median_s"], 2),
                     round(r["overhead_per_trial_s"], 2), round(r["trial_overhead_median_s"], 2),
                     round(r["evaluate_per_trial_s"], 2)])
    header = [
        f"# Sweep {res['compare']} ({'quick' if res['quick'] else 'full'})", "",
        f"`kdexp-train -m +sweep=kd_temperature {' '.join(s['overrides'])} trainer.max_epochs={s['epochs']} "
        f"hydra.sweeper.n_trials={s['trials']}`, then with: "
        + "; ".join(f"{name}: `{' '.join(extra) or '(as is)'}`" for name, extra in COMPARISONS[res["compare"]])
        + f"; {res['machine']['cpu']}, {res['machine']['cores']} cores, load {res['loadavg_start']} at start.",
        "",
        md_table(["sweep", "trials", "student epochs", "best val acc", "its test top-1", "wall s",
                  "student fit s", "fit s/epoch (median)", "overhead s/trial (sweep)",
                  "overhead s/trial (median trial)", "evaluation s/trial"], rows), "",
    ]
    if res["compare"] == "teacher-cache":
        cached, online = runs["cached"], runs["online"]
        return "\n".join(header + [
            f"The cached-teacher sweep took {cached['sweep_wall_s']:.0f} s against {online['sweep_wall_s']:.0f} s "
            f"online: {online['sweep_wall_s'] / cached['sweep_wall_s']:.2f}x faster end to end; the student fits "
            f"alone {online['fit_s'] / cached['fit_s']:.2f}x. Not student training, per trial (median): "
            f"{cached['trial_overhead_median_s']:.2f} s cached, {online['trial_overhead_median_s']:.2f} s online."])
    on, off = runs["pruned"], runs["unpruned"]
    saved = off["student_epochs"] - on["student_epochs"]
    per_epoch = off["fit_per_epoch_median_s"]
    lines = header + [
        f"Pruning trained {on['student_epochs']}/{off['student_epochs']} student epochs "
        f"({saved / off['student_epochs']:.0%} fewer): about {saved * per_epoch:.0f} s of training at the "
        f"unpruned sweep's median {per_epoch:.2f} s/epoch (load-independent, unlike the measured wall ratio "
        f"{on['sweep_wall_s'] / off['sweep_wall_s']:.2f}x). Best val acc "
        f"{on['best_value']:.4f} (pruned) vs {off['best_value']:.4f} (unpruned).",
    ]
    return "\n".join(lines)


def main() -> None:
    if "--child" in sys.argv:  # internal: one sweep, see child()
        i = sys.argv.index("--child")
        child(Path(sys.argv[i + 1]), sys.argv[sys.argv.index("--") + 1:])
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="6 trials per sweep on synthetic data (smoke test)")
    p.add_argument("--compare", choices=sorted(COMPARISONS), default="pruning",
                   help="pruning: median pruner vs none; teacher-cache: cached vs online teacher (both unpruned)")
    p.add_argument("--out", type=Path, default=REPO / "outputs" / "bench")
    args = p.parse_args()
    settings = QUICK if args.quick else FULL
    name = ("sweep_pruning" if args.compare == "pruning" else "sweep_teacher_cache") + ("_quick" if args.quick else "")
    work = args.out.resolve() / "work" / name
    for old in ("optuna.db", "mlflow.db", "mlartifacts", "multirun", "runs"):  # fresh studies; keep cache/
        path = work / old
        shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    common = ["+sweep=kd_temperature", *settings["overrides"], f"trainer.max_epochs={settings['epochs']}",
              f"paths.root={work}", f"tracking.experiment={EXPERIMENT}"]
    res = {"quick": args.quick, "compare": args.compare, "machine": machine(), "loadavg_start": loadavg(), "runs": {},
           "settings": {k: settings[k] for k in ("trials", "epochs", "overrides")}}
    start = time.perf_counter()
    # Teacher (and its cached outputs) first, in a 1-epoch single run: the sweeps then only load it.
    # --quick skips it (one process start less): the first sweep trains the tiny teacher, timed apart.
    prepare = [str(Path(sys.executable).parent / "kdexp-train"), *common, "trainer.max_epochs=1",
               "tracking.experiment=bench-prepare"]
    res["prepare_s"] = 0.0 if args.quick else run_cli(prepare, work / "prepare.log")
    for run_name, extra in COMPARISONS[args.compare]:
        print(f"sweep {run_name}: {settings['trials']} trials ...", flush=True)
        res["runs"][run_name] = sweep(run_name, common, extra, work, settings)
    res["total_s"] = time.perf_counter() - start
    md = report(res)
    write_results(args.out, name, res, md)
    print(md)


if __name__ == "__main__":
    main()
