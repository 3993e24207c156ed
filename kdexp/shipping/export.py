"""Ship a trained model without kdexp: torch.export (`.pt2`) and ONNX files, the ONNX one checked against
torch and timed with ONNX Runtime (interleaved with torch: kdexp.measure.latency).

Both formats start from one `torch.export` graph with a dynamic batch dimension. ONNX uses torch's
torch.export-based ("dynamo") exporter: the TorchScript-based one (`dynamo=False`) is deprecated since
torch 2.9 and warns that it will be removed. The dynamo exporter costs ~1-3 s per model on a 2-core CPU
(most of it building onnxscript's op table), which is paid once per trained student.
"""

from __future__ import annotations

import logging
import tempfile
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from kdexp.measure.latency import Runner, cpu_eval_copy, measure_latency, torch_runner

log = logging.getLogger("kdexp")
FORMATS = ("onnx", "pt2")
PARITY_TOLERANCE = 1e-4  # max |ONNX Runtime - torch| on the logits of a test batch
INPUT_NAME, OUTPUT_NAME = "input", "logits"
# torch.onnx logs "torchvision is not installed" and friends at WARNING on every export
_NOISY_LOGGERS = ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript", "onnx_ir")


class ExportError(RuntimeError):
    """A model could not be exported, or its export does not compute what the model computes."""


@contextmanager
def quiet_export() -> Iterator[None]:
    levels = {name: logging.getLogger(name).level for name in _NOISY_LOGGERS}
    try:
        for name in _NOISY_LOGGERS:
            logging.getLogger(name).setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


def example_batch(example: Tensor, n: int = 2) -> Tensor:
    """At least 2 samples: torch.export specializes a batch of 1 to a constant, so the batch would not be dynamic."""
    example = torch.as_tensor(example).detach().cpu()
    example = example if not example.is_floating_point() else example.float()  # token ids stay int64
    return example[:n] if len(example) >= n else example[:1].repeat(n, *([1] * (example.dim() - 1)))


def export_program(model: nn.Module, example: Tensor) -> torch.export.ExportedProgram:
    """The model's inference graph (eval mode: BN uses running statistics) with a dynamic batch dimension."""
    batch = torch.export.Dim("batch")
    try:
        with quiet_export(), torch.no_grad():
            return torch.export.export(cpu_eval_copy(model), (example_batch(example),), dynamic_shapes=({0: batch},))
    except Exception as exc:  # noqa: BLE001 - the exporter raises many types; say which model failed
        raise ExportError(f"torch.export failed for {type(model).__name__}: {exc}") from None


def as_program(model: nn.Module | torch.export.ExportedProgram, example: Tensor | None):
    if isinstance(model, torch.export.ExportedProgram):
        return model
    if example is None:
        raise ExportError("an example input batch is needed to export a module")
    return export_program(model, example)


def export_pt2(model, example: Tensor | None, path: str | Path) -> Path:
    """torch.export archive: load with `torch.export.load(path).module()`, no kdexp needed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.export.save(as_program(model, example), path)
    return path


def export_onnx(model, example: Tensor | None, path: str | Path) -> Path:
    """One self-contained ONNX file (weights inside), input "input" (N, C, H, W) float32 (text: (N, 3, L) int64 ids,
    mask, token types, padded to L), output "logits"."""
    program = as_program(model, example)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with quiet_export():
            onnx_program = torch.onnx.export(program, dynamo=True, external_data=False, verbose=False,
                                             input_names=[INPUT_NAME], output_names=[OUTPUT_NAME])
            onnx_program.save(str(path), external_data=False)
    except Exception as exc:  # noqa: BLE001 - as above
        raise ExportError(f"ONNX export failed: {exc}") from None
    return path


def onnx_session(path: str | Path, threads: int | None = None):
    """A CPU ONNX Runtime session with as many threads as torch uses (a fair latency comparison)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def input_dtype(session) -> type:
    """numpy type of the session's input: int64 for token ids, float32 for images."""
    return np.int64 if session.get_inputs()[0].type == "tensor(int64)" else np.float32


def onnx_predict(session, x: Tensor | np.ndarray, batch_size: int = 1024) -> np.ndarray:
    x = x.detach().cpu().numpy() if isinstance(x, Tensor) else x
    name = session.get_inputs()[0].name
    x = np.ascontiguousarray(x, dtype=input_dtype(session))
    return np.concatenate([session.run(None, {name: x[i : i + batch_size]})[0] for i in range(0, len(x), batch_size)])


@torch.inference_mode()
def max_abs_diff(model: nn.Module, session, x: Tensor) -> float:
    expected = cpu_eval_copy(model)(x.cpu() if not x.is_floating_point() else x.float().cpu()).numpy()
    return float(np.abs(onnx_predict(session, x) - expected).max())


def onnx_runner(session, input_shape: tuple[int, ...]) -> Runner:
    """Runs of an ONNX Runtime session on a fixed random batch, for kdexp.measure.latency."""
    name = session.get_inputs()[0].name

    def at(batch: int):
        if input_dtype(session) == np.int64:  # token ids: token 0 everywhere, unmasked (example_input's batch)
            x = np.zeros((batch, *input_shape), np.int64)
            x[:, 1] = 1
        else:
            x = np.random.default_rng(0).standard_normal((batch, *input_shape), np.float32)
        feed = {name: x}
        return lambda: session.run(None, feed)

    return at


@torch.inference_mode()
def session_latency(session, other: Runner, input_shape: tuple[int, ...], batch: int, repeats: int,
                    prefix: str) -> dict[str, float]:
    """`session` timed at batch 1 and `batch` interleaved with `other` (torch's model, or the float session of
    an int8 one) in `repeats` blocks, kdexp.measure.latency's protocol (the same as torch's latency).

    Returns:
        {prefix}_latency_b<b>_ms (median) and _b<b>_iqr_ms, {prefix}_speedup_b<b> (other / session, median of
        the per-block ratios) and _b<b>_iqr, and {prefix}_latency_noisy (1: either spread above the limit).
    """
    result = measure_latency({"session": onnx_runner(session, input_shape), "other": other}, (1, batch), repeats,
                             reference="session")
    out = {f"{prefix}_latency_noisy": float(bool(result.noisy))}
    for b, take in result.takes.items():
        spent, speedup = take.times["session"], take.ratios["other"]
        out.update({f"{prefix}_latency_b{b}_ms": spent.median, f"{prefix}_latency_b{b}_iqr_ms": spent.iqr,
                    f"{prefix}_speedup_b{b}": speedup.median, f"{prefix}_speedup_b{b}_iqr": speedup.iqr})
    return out


def onnx_metrics(model: nn.Module, example: Tensor, batch: int = 256, *, path: str | Path | None = None,
                 repeats: int = 20, tolerance: float = PARITY_TOLERANCE, program=None) -> dict[str, float]:
    """Export `model` to ONNX (at `path`, else a temporary file), check it on `example` (a test batch) and
    time it at batch 1 and `batch` interleaved with torch's `model` in `repeats` blocks (session_latency).

    Returns onnx_max_abs_diff, onnx_parity_ok (1.0 when within `tolerance`), onnx_size_bytes, onnx_export_s,
    onnx_latency_b1_ms / _b<batch>_ms (median; + _iqr_ms), onnx_speedup_b1 / _b<batch> (torch / ONNX per
    block, median; + _iqr) and onnx_latency_noisy.
    `program`: the model's export_program, when the caller has it already (saves one torch.export).
    """
    input_shape = tuple(example.shape[1:])
    with tempfile.TemporaryDirectory(prefix="kdexp-onnx-") as tmp:
        target = Path(path) if path is not None else Path(tmp) / "model.onnx"
        start = time.perf_counter()
        export_onnx(program if program is not None else model, example, target)
        out = {"onnx_export_s": time.perf_counter() - start, "onnx_size_bytes": float(target.stat().st_size)}
        session = onnx_session(target)
    out["onnx_max_abs_diff"] = max_abs_diff(model, session, example)
    out["onnx_parity_ok"] = float(out["onnx_max_abs_diff"] <= tolerance)
    if not out["onnx_parity_ok"]:
        log.warning("ONNX export differs from torch by %.3g (> %.0e) on the test batch",
                    out["onnx_max_abs_diff"], tolerance)
    out.update(session_latency(session, torch_runner(cpu_eval_copy(model), input_shape), input_shape, batch, repeats,
                               "onnx"))
    return out
