"""The shipped student: ONNX Runtime against torch latency at batch 1 and 256, and the int8 (QDQ) file against
the float one, for the default students (cnn_tiny on 28x28x1 Fashion-MNIST and on 8x8x1 digits), and cnn_small.

    python benchmarks/export_latency.py            # ~1 min here
    python benchmarks/export_latency.py --quick    # smoke run

Both runtimes use torch's thread count and kdexp.measure.latency's protocol: ONNX Runtime timed interleaved with
torch (the int8 file with the float one) in repeated blocks, medians, and the speedup paired block by block.
Latency does not depend on the weights: the students are freshly initialized (BN statistics from a few
random batches). Results: outputs/bench/export_latency[_quick].{json,md}.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `benchmarks` and `kdexp` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from benchmarks.common import REPO, loadavg, machine, md_table, write_results
from kdexp.measure.latency import time_models
from kdexp.models import create_model
from kdexp.shipping.export import onnx_metrics
from kdexp.shipping.int8 import int8_onnx_metrics

# the default students, and a larger one whose int8 file is less dominated by the graph
CASES = {"fashion (28x28x1)": ("cnn_tiny", (1, 28, 28)), "digits (8x8x1)": ("cnn_tiny", (1, 8, 8)),
         "mnist (28x28x1)": ("cnn_small", (1, 28, 28))}


def student(arch: str, shape: tuple[int, ...]) -> torch.nn.Module:
    model = create_model(arch, 10, shape[0]).train()
    with torch.no_grad():
        for _ in range(4):
            model(torch.randn(64, *shape))
    return model.eval()


def int8_row(model: torch.nn.Module, shape: tuple[int, ...], batch: int, repeats: int) -> dict:
    from kdexp.shipping.quantization import convert_int8, observed, prepare_qat_student

    qat = prepare_qat_student(model, "x86")
    with torch.no_grad():
        for _ in range(4):
            qat(torch.randn(64, *shape))
    qat = observed(qat)
    x = torch.randn(256, *shape)
    return int8_onnx_metrics(qat, convert_int8(qat), x, x, None, batch, repeats=repeats)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int, help="torch and ONNX Runtime threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    batch, repeats = (16, 3) if args.quick else (256, 20)
    torch.manual_seed(0)
    results, rows = {"machine": machine(), "load_before": loadavg(), "cases": {}}, []
    for name, (arch, shape) in CASES.items():
        model = student(arch, shape)
        torch_ms = time_models({"torch": model}, shape, (1, batch), repeats, reference=None).metrics("torch", "")
        m = onnx_metrics(model, torch.randn(256, *shape), batch, repeats=repeats)
        q = int8_row(model, shape, batch, repeats)
        results["cases"][name] = {"arch": arch, **torch_ms, **m, **q}
        rows.append([f"{arch}, {name}", torch_ms["latency_b1_ms"], m["onnx_latency_b1_ms"],
                     q["onnx_int8_latency_b1_ms"], torch_ms[f"latency_b{batch}_ms"],
                     m[f"onnx_latency_b{batch}_ms"], q[f"onnx_int8_latency_b{batch}_ms"], m["onnx_speedup_b1"],
                     m[f"onnx_speedup_b{batch}"], q[f"onnx_int8_speedup_b{batch}"], m["onnx_max_abs_diff"],
                     int(q["onnx_float_size_bytes"]), int(q["onnx_int8_size_bytes"])])
    results["load_after"] = loadavg()
    table = md_table(["student", "torch b1 ms", "ONNX b1 ms", "ONNX int8 b1 ms", f"torch b{batch} ms",
                      f"ONNX b{batch} ms", f"ONNX int8 b{batch} ms", "ONNX speedup b1 (paired)",
                      f"ONNX speedup b{batch} (paired)", f"int8 vs float ONNX b{batch} (paired)", "max abs diff",
                      "float .onnx bytes",
                      "int8 .onnx bytes"], rows)
    note = f"load average before/after: {results['load_before']} / {results['load_after']}; {results['machine']}"
    name = "export_latency" + ("_quick" if args.quick else "") + (f"_t{args.threads}" if args.threads else "")
    write_results(REPO / "outputs" / "bench", name, results,
                  table + "\n\n" + note)
    print(table + "\n\n" + note)


if __name__ == "__main__":
    main()
