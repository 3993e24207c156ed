"""The same student training on 1 process and on N (DDP), at the same global batch: wall time, samples/s,
scaling efficiency and final test accuracy over seeds, through the real `kdexp-train`.

    python benchmarks/ddp_scaling.py                       # CPU: 1 vs 2 gloo processes, digits
    python benchmarks/ddp_scaling.py --accelerator gpu     # GPU machine: 1 GPU vs all of them (nccl)
    python benchmarks/ddp_scaling.py --accelerator gpu --data cifar100 --root /data/cifar-100-python \
        --teacher resnet32x4 --student resnet8x4 --epochs 5 --precision bf16-mixed

The teacher is trained once (1 process) and loaded by every run (teacher.ckpt), so only the student's
distillation is compared. data.batch_size is per process: N processes run at global_batch / N each. The
student run's MLflow start/end times give its wall time (its fit, evaluation and records).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

BIN = Path(sys.executable).parent


def kdexp_train(root: Path, args: list[str]) -> None:
    env = {**os.environ, "KDEXP_OFFLINE": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    done = subprocess.run([str(BIN / "kdexp-train"), f"paths.root={root}", *args], env=env, capture_output=True,
                          text=True, timeout=7200)
    if done.returncode != 0:
        raise RuntimeError(f"kdexp-train {' '.join(args)} failed:\n{done.stderr[-3000:]}")


def student_run(root: Path):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    exp = client.get_experiment_by_name("kdexp")
    (run,) = client.search_runs([exp.experiment_id], "tags.`kdexp.role` = 'student'", max_results=1,
                                order_by=["attributes.start_time DESC"])
    return run


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--accelerator", default="cpu", choices=["cpu", "gpu"])
    p.add_argument("--devices", type=int, default=None, help="N (default: 2 on CPU, every GPU on a GPU machine)")
    p.add_argument("--data", default="digits")
    p.add_argument("--root", default=None, help="data.root")
    p.add_argument("--teacher", default="cnn_medium")
    p.add_argument("--student", default="cnn_tiny")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--global-batch", type=int, default=64)
    p.add_argument("--precision", default="32-true")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--out", default=None, help="write the results as JSON here")
    a = p.parse_args(argv)
    if a.devices is None:
        import torch

        a.devices = torch.cuda.device_count() if a.accelerator == "gpu" else 2
    common = [f"data={a.data}", f"teacher={a.teacher}", f"student={a.student}", f"trainer.max_epochs={a.epochs}",
              f"trainer.accelerator={a.accelerator}", f"trainer.precision={a.precision}", "baseline=false",
              *( [f"data.root={a.root}"] if a.root else [])]
    work = Path(tempfile.mkdtemp(prefix="ddp-scaling-"))
    kdexp_train(work / "teacher", [*common, "trainer.devices=1", "distill=none"])
    (teacher,) = (work / "teacher" / "cache" / "models").glob("*/model.pt")
    rows = {}
    for n in sorted({1, a.devices}):
        results = []
        for seed in a.seeds:
            root = work / f"n{n}-seed{seed}"
            strategy = ["+trainer.strategy=ddp"] if n > 1 else []
            kdexp_train(root, [*common, f"teacher.ckpt={teacher}", f"trainer.devices={n}", *strategy,
                               f"data.batch_size={a.global_batch // n}", f"seed={seed}"])
            run = student_run(root)
            seconds = (run.info.end_time - run.info.start_time) / 1000
            results.append({"seed": seed, "seconds": seconds, "top1": run.data.metrics["student/test_top1"],
                            "train_samples": run.data.params.get("data.limit")})
        rows[n] = results
    base = statistics.mean(r["seconds"] for r in rows[1])
    print(f"| processes | global batch | wall s (mean of {len(a.seeds)}) | speed-up | efficiency | "
          "test top-1 (mean ± sd) |\n|---|---|---|---|---|---|")
    for n, results in rows.items():
        secs = statistics.mean(r["seconds"] for r in results)
        accs = [100 * r["top1"] for r in results]
        sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
        print(f"| {n} | {a.global_batch} ({a.global_batch // n} x {n}) | {secs:.1f} | {base / secs:.2f} | "
              f"{base / secs / n:.2f} | {statistics.mean(accs):.2f} ± {sd:.2f} |")
    out = {"args": vars(a), "rows": rows}
    if a.out:
        Path(a.out).write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
