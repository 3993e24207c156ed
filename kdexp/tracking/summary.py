"""The printed summary of one experiment: teacher, vanilla student and distilled student side by side."""

from __future__ import annotations


def _human(n: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:.0f}"


def summary_table(metrics: dict[str, float], conf: dict) -> str:
    batch = conf["eval"]["latency_batch"]
    columns = [
        ("test top-1", "test_top1", lambda v: f"{100 * v:.2f}"),
        ("top-5", "test_top5", lambda v: f"{100 * v:.2f}"),
        ("agree w/ T", "agreement", lambda v: f"{100 * v:.2f}"),
        ("KL(T‖S)", "kl_teacher", lambda v: f"{v:.3f}"),
        ("ECE", "test_ece", lambda v: f"{v:.3f}"),
        ("params", "params", _human),
        ("FLOPs", "flops", _human),
        ("lat b1 ms", "latency_b1_ms", lambda v: f"{v:.3f}"),
        (f"lat b{batch} ms", f"latency_b{batch}_ms", lambda v: f"{v:.2f}"),
        ("size", "size_bytes", lambda v: _human(v) + "B"),
    ]
    d = conf["distill"]
    rows = [("teacher", f"teacher {conf['teacher']['arch']}")]
    if conf.get("baseline"):
        rows.append(("baseline", f"student {conf['student']['arch']} (vanilla)"))
    rows.append(("student", f"student {conf['student']['arch']} ({d['name']})"))

    header = "| model | " + " | ".join(c[0] for c in columns) + " |"
    lines = [header, "|" + "---|" * (len(columns) + 1)]
    for role, label in rows:
        cells = []
        for _, key, fmt in columns:
            value = metrics.get(f"{role}/{key}")
            cells.append("–" if value is None else fmt(value))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    ratio_keys = ("test_top1", "params", "flops", "latency_b1_ms")
    ratio_text = ", ".join(
        f"{k} {metrics[f'student/{k}_ratio']:.3f}" for k in ratio_keys if f"student/{k}_ratio" in metrics
    )
    caption = (
        f"data={conf['data']['name']} seed={conf['seed']} epochs={conf['trainer']['max_epochs']} "
        f"distill={d['name']} weights={d.get('weights')} T={d.get('temperature')}; "
        "last-epoch weights on the test split"
    )
    if "student/best_val/test_top1" in metrics:
        caption += (f"; best-val epoch {metrics['student/best_epoch']:.0f}: "
                    f"test top-1 {100 * metrics['student/best_val/test_top1']:.2f}")
    return "\n".join([*lines, "", f"student/teacher: {ratio_text}", caption, *latency_lines(metrics, batch),
                      *onnx_line(metrics, batch)])


def noisy_roles(metrics: dict[str, float]) -> list[str]:
    """The roles whose latency stayed noisy (<role>/latency_noisy = 1), sorted."""
    return sorted(k.removesuffix("/latency_noisy") for k, v in metrics.items() if k.endswith("/latency_noisy") and v)


def latency_lines(metrics: dict[str, float], batch: int) -> list[str]:
    """How latency was measured (kdexp/measure/latency.py), the paired student/teacher ratios and the flags."""
    if "latency/blocks" not in metrics:
        return []
    paired = ", ".join(f"b{b} {metrics[f'student/latency_b{b}_ms_ratio']:.3f} "
                       f"(IQR {metrics[f'student/latency_b{b}_ratio_iqr']:.3f})"
                       for b in dict.fromkeys((1, batch)) if f"student/latency_b{b}_ms_ratio" in metrics)
    threads = metrics["latency/threads"]
    clock = "thread CPU time" if threads == 1 else "wall time"
    lines = [f"latency: median (IQR) of {metrics['latency/blocks']:.0f} interleaved blocks, every model above in the "
             f"same blocks, {threads:.0f} torch thread(s), {clock}" + (f"; student/teacher per block: {paired}"
                                                                       if paired else "")]
    noisy = noisy_roles(metrics)
    if noisy:
        lines.append(f"LATENCY NOISY: {', '.join(noisy)} (IQR/median above the limit after retakes): the machine "
                     "was busy; compare ratios, not milliseconds")
    if metrics.get("student/latency_slower_than_teacher"):
        lines.append("LATENCY FLAG: the student has fewer parameters and FLOPs than its teacher but measured slower")
    return lines


def onnx_line(metrics: dict[str, float], batch: int) -> list[str]:
    """The exported student in ONNX Runtime beside torch (kdexp/training/records.py), when it was exported."""
    m = {k.removeprefix("student/onnx_"): v for k, v in metrics.items() if k.startswith("student/onnx_")}
    if "latency_b1_ms" not in m:
        return []
    big = f"; b{batch} {m[f'latency_b{batch}_ms']:.2f} ms" if f"latency_b{batch}_ms" in m else ""
    noisy = "; NOISY (IQR/median above the limit)" if m.get("latency_noisy") else ""
    return [f"student in ONNX Runtime: lat b1 {m['latency_b1_ms']:.3f} ms{big} "
            f"(max |logit diff| vs torch {m.get('max_abs_diff', float('nan')):.1e}{noisy})"]
