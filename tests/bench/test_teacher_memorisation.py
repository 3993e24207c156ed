"""benchmarks/teacher_memorisation.py: the memorisation table (KD per teacher against the tuned vanilla student,
paired by (seed, study repeat), Holm over the teachers) and its teacher diagnostics; the committed table
regenerates byte for byte from the committed runs.csv files and teachers.csv."""

from __future__ import annotations

import csv
import re
from pathlib import Path

from scipy import stats as sp

from benchmarks.teacher_memorisation import TEACHER_COLUMNS, main, table_markdown, teacher_diagnostics

RESULTS = Path(__file__).resolve().parents[2] / "docs" / "results"


def run(method, fp, seed, repeat, acc, student="s"):
    return {"method": method, "teacher_fingerprint": fp, "seed": str(seed), "study_repeat": str(repeat),
            "student": student, "tuned": "true", "student/test_top1": str(acc)}


def teacher(fp, augment="false", smoothing="0"):
    return {"teacher_fingerprint": fp, "arch": "t", "epochs": "16", "augment": augment, "label_smoothing": smoothing,
            "test_top1": "0.9", **{c: "0.5" for c in TEACHER_COLUMNS if c.startswith(("train_", "val_"))}}


def test_kd_of_each_teacher_is_paired_with_the_tuned_vanilla_by_seed_and_repeat_and_holm_adjusted():
    vanilla = [0.80, 0.81, 0.82, 0.83, 0.84, 0.85]
    kd_a = [0.81, 0.83, 0.82, 0.85, 0.86, 0.86]  # differences 1, 2, 0, 2, 2, 1 points
    kd_b = [0.80, 0.82, 0.81, 0.83, 0.85, 0.85]  # differences 0, 1, -1, 0, 1, 0
    runs = []
    for i, (v, a, b) in enumerate(zip(vanilla, kd_a, kd_b)):
        seed, repeat = i % 3, i // 3
        runs += [run("none", "a", seed, repeat, v), run("kd", "a", seed, repeat, a), run("kd", "b", seed, repeat, b),
                 run("kd", "a", seed, repeat, 0.1, student="other")]  # another student: not in this table
    md = table_markdown(runs, [teacher("a"), teacher("b", augment="true")], "s")
    p_a = sp.ttest_rel([100 * x for x in kd_a], [100 * x for x in vanilla]).pvalue
    p_b = sp.ttest_rel([100 * x for x in kd_b], [100 * x for x in vanilla]).pvalue
    holm = sorted([p_a, p_b])
    adjusted = {min(p_a, p_b): 2 * holm[0], max(p_a, p_b): max(2 * holm[0], holm[1])}
    line_a = next(line for line in md.splitlines() if line.startswith("| 16 epochs, no regularisation"))
    line_b = next(line for line in md.splitlines() if line.startswith("| 16 epochs, augmented"))
    assert "(n=6)" in line_a and "+1.33" in line_a
    assert line_a.endswith(f"| {p_a:.3f} | {adjusted[p_a]:.3f} |") and line_b.endswith(
        f"| {p_b:.3f} | {adjusted[p_b]:.3f} |")
    assert "tuned vanilla student 82.50 ± 1.87" in md


def test_diagnostics_of_a_cached_teacher_on_its_own_splits(tmp_path):
    import json

    import torch

    from kdexp.models import create_model

    fp = "abc123"
    entry = tmp_path / "cache" / "models" / fp
    entry.mkdir(parents=True)
    torch.manual_seed(0)
    model = create_model("cnn_tiny", num_classes=10, in_channels=1)
    torch.save(model.state_dict(), entry / "model.pt")
    spec = {"data": {"name": "digits", "limit": None, "val_fraction": 0.2, "split_seed": 0, "augment": False},
            "recipe": {"label_smoothing": 0.1}, "max_epochs": 3, "kwargs": {}}
    (entry / "meta.json").write_text(json.dumps({"spec": spec}))
    out = teacher_diagnostics(tmp_path, fp, "cnn_tiny")
    assert (out["epochs"], out["augment"], out["label_smoothing"]) == (3, "false", "0.1")
    for split in ("train", "val"):
        acc, h1, h4 = (float(out[f"{split}_{k}"]) for k in ("acc", "entropy_T1", "entropy_T4"))
        assert 0 <= acc <= 1 and 0 <= h1 <= h4 <= torch.log(torch.tensor(10.0)).item() + 1e-6  # T flattens
        assert 0 < float(out[f"{split}_p_true_T4"]) < 1


def test_the_committed_memorisation_table_regenerates_byte_for_byte(tmp_path):
    folder = RESULTS / "fashion_teachers"
    command = (folder / "COMMAND").read_text().split()
    runs = [str(RESULTS.parents[1] / p) for p in command[command.index("--runs") + 1:command.index("--teachers")]]
    main(["table", "--runs", *runs, "--teachers", str(folder / "teachers.csv"), "--student",
          command[command.index("--student") + 1], "--out", str(tmp_path)])
    assert (tmp_path / "table.md").read_text() == (folder / "table.md").read_text()
    assert re.search(r"\| 16 epochs, no regularisation \|", (folder / "table.md").read_text())
    assert list(csv.DictReader(open(folder / "teachers.csv")))[0].keys() == set(TEACHER_COLUMNS)
