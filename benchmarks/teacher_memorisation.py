"""The memorisation control of docs/fashion_full_benchmark.md: does tuned KD fail to beat the tuned vanilla
student because the teacher memorised its training set? Teachers that differ only in their own regularisation
(teacher.augment, teacher.label_smoothing) distil the same student under the same protocol; for each teacher,
its train/validation accuracy and how soft its outputs are on train vs validation images.

Two steps, both reading the committed per-run files (runs.csv, as kdexp-report wrote them):
    # per teacher (by its cache key, column teacher_fingerprint): accuracy, cross-entropy, mean entropy of
    # softmax(z/T) and mean probability of the true class at T = 1 and 4, on the train and validation splits
    python benchmarks/teacher_memorisation.py teachers --root OUTPUTS --runs RUNS.csv [RUNS.csv ...] \\
        --out docs/results/fashion_teachers/teachers.csv
    # KD (tuned) of each teacher against the tuned vanilla student: paired by (seed, study repeat), Holm over
    # the teachers (kdexp.report.stats, as kdexp-report does), beside the teacher's diagnostics
    python benchmarks/teacher_memorisation.py table --runs RUNS.csv [RUNS.csv ...] \\
        --teachers docs/results/fashion_teachers/teachers.csv --student cnn_lean --out docs/results/fashion_teachers
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `benchmarks` and `kdexp` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TEMPERATURES = (1.0, 4.0)
SPLITS = ("train", "val")
TEACHER_COLUMNS = ["teacher_fingerprint", "arch", "epochs", "augment", "label_smoothing", "test_top1",
                   *(f"{split}_{what}" for split in SPLITS for what in
                     ("acc", "ce", *(f"{k}_T{t:g}" for t in TEMPERATURES for k in ("entropy", "p_true"))))]


def read_runs(paths: list[str]) -> list[dict]:
    rows = []
    for path in paths:
        with open(path, newline="") as f:
            rows += list(csv.DictReader(f))
    return rows


# -- step 1: the teachers ---------------------------------------------------------------------------------------

def teacher_diagnostics(root: Path, fingerprint: str, arch: str) -> dict:
    """One cached teacher's accuracy, CE, tempered-output entropy and p_true on its train and val splits."""
    import torch
    import torch.nn.functional as F

    from kdexp.data import create_datamodule
    from kdexp.models import create_model

    entry = root / "cache" / "models" / fingerprint
    spec = json.loads((entry / "meta.json").read_text())["spec"]
    data = spec["data"]
    dm = create_datamodule(data["name"], limit=data["limit"], val_fraction=data["val_fraction"],
                           split_seed=data["split_seed"])
    dm.setup()
    model = create_model(arch, num_classes=dm.num_classes, in_channels=dm.in_channels, **spec.get("kwargs", {}))
    model.load_state_dict(torch.load(entry / "model.pt", map_location="cpu", weights_only=True))
    model.eval()
    recipe = spec["recipe"]
    out = {"teacher_fingerprint": fingerprint, "arch": arch, "epochs": spec["max_epochs"],
           "augment": "true" if data.get("augment") else "false",
           "label_smoothing": f"{float(recipe.get('label_smoothing', 0.0)):g}"}
    for split in SPLITS:
        x, y = dm.split_tensors(split)
        with torch.no_grad():
            z = torch.cat([model(x[i:i + 2048]) for i in range(0, len(x), 2048)])
        out[f"{split}_acc"] = f"{(z.argmax(1) == y).float().mean().item():.6f}"
        out[f"{split}_ce"] = f"{F.cross_entropy(z, y).item():.6f}"
        for t in TEMPERATURES:
            p = F.softmax(z / t, 1)
            entropy = -(p * p.clamp_min(1e-12).log()).sum(1).mean().item()
            out[f"{split}_entropy_T{t:g}"] = f"{entropy:.6f}"
            out[f"{split}_p_true_T{t:g}"] = f"{p.gather(1, y[:, None]).mean().item():.6f}"
    return out


def teachers(args) -> None:
    runs = read_runs(args.runs)
    found = {r["teacher_fingerprint"]: r for r in runs if r.get("teacher_fingerprint")}
    rows = []
    for fp, run in sorted(found.items()):
        row = teacher_diagnostics(Path(args.root), fp, run["teacher"])
        row["test_top1"] = f"{float(run['teacher/test_top1']):.6f}"
        rows.append(row)
        print(fp, {k: row[k] for k in ("train_acc", "val_acc", "train_entropy_T4", "val_entropy_T4")}, flush=True)
    rows.sort(key=lambda r: (r["augment"], float(r["label_smoothing"]), -int(r["epochs"])))  # unregularised first
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w", newline="") as f:
        writer = csv.DictWriter(f, TEACHER_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


# -- step 2: the table ------------------------------------------------------------------------------------------

def unit(run: dict) -> str:
    return run["seed"] if not run.get("study_repeat") else f"{run['seed']}/r{run['study_repeat']}"


def teacher_label(t: dict) -> str:
    parts = [f"{t['epochs']} epochs"]
    parts += ["augmented"] if t["augment"] == "true" else []
    parts += [f"label smoothing {t['label_smoothing']}"] if float(t["label_smoothing"]) else []
    return ", ".join(parts) if len(parts) > 1 else f"{parts[0]}, no regularisation"


def table_markdown(runs: list[dict], teacher_rows: list[dict], student: str, method: str = "kd") -> str:
    """The memorisation table: one line per teacher, KD (tuned) against the tuned vanilla `student`."""
    from kdexp.report import stats

    def acc(run):
        return 100 * float(run["student/test_top1"])

    mine = [r for r in runs if r["student"] == student and r.get("tuned") == "true"]
    vanilla = {unit(r): acc(r) for r in mine if r["method"] == "none"}
    lines, comparisons = [], []
    for t in teacher_rows:
        kd = {unit(r): acc(r) for r in mine if r["method"] == method and r["teacher_fingerprint"] ==
              t["teacher_fingerprint"]}
        comparisons.append((t, kd, stats.compare(kd, vanilla) if kd else None))
    adjusted = iter(stats.adjust([c.p for _, _, c in comparisons if c is not None and c.p is not None], "holm"))
    v = list(vanilla.values())
    head = (f"Student {student}, test top-1 % (mean ± SD over {len(v)} runs: 2 study repeats × seeds); tuned "
            f"vanilla student {statistics.fmean(v):.2f} ± {statistics.stdev(v):.2f}. Δ = KD (tuned) − tuned vanilla, "
            "paired by (seed, study repeat), paired t-test; p adjusted by Holm over the teachers. Teacher outputs: "
            "mean entropy (nats) of softmax(z/T) and mean probability of the true class, train / validation split.")
    lines += [head, "",
              "| Teacher | train acc | val acc | test acc | H(T=1) train / val | H(T=4) train / val | "
              "p_true(T=4) train / val | KD (tuned) | Δ [95 % CI] | p | p Holm |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for t, kd, c in comparisons:
        teacher = (f"| {teacher_label(t)} | {100 * float(t['train_acc']):.2f} | {100 * float(t['val_acc']):.2f} | "
                   f"{100 * float(t['test_top1']):.2f} | {float(t['train_entropy_T1']):.3f} / "
                   f"{float(t['val_entropy_T1']):.3f} | {float(t['train_entropy_T4']):.3f} / "
                   f"{float(t['val_entropy_T4']):.3f} | {float(t['train_p_true_T4']):.3f} / "
                   f"{float(t['val_p_true_T4']):.3f} |")
        if c is None:
            lines.append(teacher + " – | – | – | – |")
            continue
        values = list(kd.values())
        delta = statistics.fmean(values) - statistics.fmean(v)
        ci = "" if c.ci is None else f" [{c.ci[0]:+.2f}, {c.ci[1]:+.2f}]"
        p = "–" if c.p is None else f"{c.p:.3f}"
        p_adj = "–" if c.p is None else f"{next(adjusted):.3f}"
        lines.append(teacher + f" {statistics.fmean(values):.2f} ± {statistics.stdev(values):.2f} (n={len(values)}) | "
                     f"{delta:+.2f}{ci} | {p} | {p_adj} |")
    return "\n".join(lines) + "\n"


def table(args) -> None:
    with open(args.teachers, newline="") as f:
        teacher_rows = list(csv.DictReader(f))
    md = table_markdown(read_runs(args.runs), teacher_rows, args.student)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text(md)
    print(md)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="step", required=True)
    t = sub.add_parser("teachers", help="diagnostics of every teacher the runs name, from the model cache")
    t.add_argument("--root", required=True, help="kdexp-train's paths.root (its cache/models/ holds the teachers)")
    t.add_argument("--runs", nargs="+", required=True)
    t.add_argument("--out", required=True)
    m = sub.add_parser("table", help="the memorisation table from runs.csv files and teachers.csv")
    m.add_argument("--runs", nargs="+", required=True)
    m.add_argument("--teachers", required=True)
    m.add_argument("--student", required=True)
    m.add_argument("--out", required=True, help="folder for table.md")
    args = parser.parse_args(argv)
    teachers(args) if args.step == "teachers" else table(args)


if __name__ == "__main__":
    main()
