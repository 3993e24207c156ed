"""Wall-time estimate of sweeps/matrix/fashion_full.yaml on the project's 2-core CPU (docs/fashion_full_benchmark.md).

Inputs: per-step times of batch-128 training steps on an idle machine, 2 threads (cnn_tiny 11.3 ms and the
cnn_medium forward pass 20 ms: benchmarks/README.md), and the ratios of cnn_small and cnn_medium steps to
cnn_tiny's measured in one process (1 thread, same load for all three: 3.2x and 5.2x). Method factors
follow the measured fashion_cpu cells (a cached-teacher logit method 1.02-1.05x vanilla; CRD at 4,096
negatives about 2x; methods whose teacher features exceed teacher_cache.max_gb run the teacher online).
    python benchmarks/fashion_full_estimate.py
"""

STEPS = 54_000 // 128 + 1
STEP_MS = {"cnn_tiny": 11.3, "cnn_small": 11.3 * 3.2, "cnn_medium": 11.3 * 5.2}
TEACHER_FORWARD_MS = 20.0
METHODS = ["none", "kd", "dkd", "dist", "kd_std", "crd", "ab", "reviewkd"]
EPOCHS, SEEDS, TRIALS, TRIAL_EPOCHS, TEACHER_EPOCHS = 3, 5, 6, 2, 20
CELL_OVERHEAD_S, TRIAL_OVERHEAD_S, PRUNED_SHARE = 4.0, 3.0, 0.75  # median pruning: ~25% fewer trial epochs


def factor(method: str, student: str) -> float:
    online = (STEP_MS[student] + TEACHER_FORWARD_MS) / STEP_MS[student]
    return {"crd": 2.0, "ab": 1.1 * online, "reviewkd": 1.3 * online}.get(method, 1.0 if method == "none" else 1.05)


def main() -> None:
    teacher = TEACHER_EPOCHS * (STEPS * STEP_MS["cnn_medium"] / 1000 + 2)
    total = teacher
    print(f"teacher cnn_medium: {teacher / 60:.1f} min ({TEACHER_EPOCHS} epochs)")
    for student in ("cnn_tiny", "cnn_small"):
        epoch = STEPS * STEP_MS[student] / 1000 + 1.0  # + the validation pass
        cells = sum(SEEDS * (EPOCHS * epoch * factor(m, student) + CELL_OVERHEAD_S) for m in METHODS)
        studies = sum(TRIALS * (TRIAL_EPOCHS * epoch * factor(m, student) * PRUNED_SHARE + TRIAL_OVERHEAD_S)
                      for m in METHODS if m != "none")
        total += cells + studies
        print(f"{student}: {epoch:.1f} s/epoch; {len(METHODS) * SEEDS} cells {cells / 60:.1f} min; "
              f"{len(METHODS) - 1} studies {studies / 60:.1f} min")
    print(f"total: {total / 60:.0f} min = {total / 3600:.2f} h")


if __name__ == "__main__":
    main()
