"""Shipping a student: torch.export (.pt2) and ONNX files that compute what the torch model computes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kdexp.data import create_datamodule
from kdexp.models import create_model
from kdexp.shipping.export import (
    ExportError,
    export_onnx,
    export_program,
    export_pt2,
    onnx_metrics,
    onnx_predict,
    onnx_session,
)


def trained_bn_statistics(model: torch.nn.Module, x: torch.Tensor) -> torch.nn.Module:
    """A few train-mode passes, so BatchNorm's running statistics are not the identity of a fresh model."""
    model.train()
    with torch.no_grad():
        for i in range(0, len(x), 32):
            model(x[i : i + 32])
    return model.eval()


@pytest.fixture(scope="module")
def digits_student():
    dm = create_datamodule("digits")
    x, _ = dm.split_tensors("train")
    return trained_bn_statistics(create_model("cnn_tiny", 10, 1), x[:128]), dm.split_tensors("test")[0][:64]


def test_onnx_and_pt2_compute_what_torch_computes_at_any_batch(tmp_path, digits_student):
    model, x = digits_student
    with torch.no_grad():
        expected = model(x)
    program = export_program(model, x)
    session = onnx_session(export_onnx(program, None, tmp_path / "student.onnx"))
    assert session.get_inputs()[0].name == "input" and session.get_outputs()[0].name == "logits"
    for batch in (1, 5, 64):  # the batch dimension is dynamic
        assert np.abs(onnx_predict(session, x[:batch]) - expected[:batch].numpy()).max() <= 1e-4
    loaded = torch.export.load(export_pt2(program, None, tmp_path / "student.pt2")).module()
    assert torch.allclose(loaded(x[:3]), expected[:3], atol=1e-5)
    assert model.training is False and next(model.parameters()).requires_grad  # the caller's model untouched


def test_onnx_metrics_parity_size_and_latency(tmp_path, digits_student):
    model, x = digits_student
    metrics = onnx_metrics(model, x, batch=16, path=tmp_path / "s.onnx", repeats=3)
    assert metrics["onnx_max_abs_diff"] <= 1e-4 and metrics["onnx_parity_ok"] == 1.0
    assert metrics["onnx_size_bytes"] == (tmp_path / "s.onnx").stat().st_size > 4 * 6000  # ~6k float weights
    assert 0 < metrics["onnx_latency_b1_ms"] <= metrics["onnx_latency_b16_ms"] < 1000
    # timed interleaved with torch, as torch's latency is: median and IQR, speedup paired per block
    for b in (1, 16):
        assert 0 <= metrics[f"onnx_latency_b{b}_iqr_ms"] and metrics[f"onnx_speedup_b{b}"] > 0
        assert metrics[f"onnx_speedup_b{b}_iqr"] >= 0
    assert metrics["onnx_latency_noisy"] in (0.0, 1.0)


def test_export_errors_are_clear():
    with pytest.raises(ExportError, match="an example input batch is needed"):
        export_onnx(create_model("cnn_tiny", 10, 1), None, "unused.onnx")


@pytest.mark.slow
def test_int8_student_of_qat_runs_in_onnx_runtime_and_is_smaller(tmp_path):
    from kdexp.shipping.int8 import int8_onnx_metrics
    from kdexp.shipping.quantization import convert_int8, observed, prepare_qat_student

    dm = create_datamodule("digits")
    x, y = dm.split_tensors("train")
    torch.manual_seed(0)
    model = create_model("cnn_tiny", 10, 1)
    optimizer = torch.optim.Adam(model.parameters(), 3e-3)
    for step in range(60):  # float training (fast), so that top-1 is not a coin toss
        i = (step * 64) % 512
        loss = F.cross_entropy(model(x[i : i + 64]), y[i : i + 64])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    qat = prepare_qat_student(model, "x86")
    with torch.no_grad():  # QAT forward passes: the observers learn the int8 ranges (QAT steps are slow here)
        for i in range(0, 256, 64):
            qat(x[i : i + 64])
    qat = observed(qat)
    int8 = convert_int8(qat)
    x_test, y_test = dm.split_tensors("test")
    metrics = int8_onnx_metrics(qat, int8, x[:256], x_test, y_test, batch=32, path=tmp_path / "int8.onnx",
                                float_path=tmp_path / "float.onnx", repeats=3)
    assert (tmp_path / "int8.onnx").stat().st_size == metrics["onnx_int8_size_bytes"]
    assert metrics["onnx_int8_size_ratio"] < 0.7  # int8 weights (a quarter of float32) plus the graph and scales
    torch_top1 = (int8(x_test).argmax(1) == y_test).float().mean().item()
    assert torch_top1 > 0.6  # the check below is meaningful only for a model that learned something
    assert metrics["onnx_int8_agreement"] >= 0.9
    assert abs(metrics["onnx_int8_top1"] - torch_top1) <= 0.05
    assert metrics["onnx_int8_latency_b1_ms"] > 0 and metrics["onnx_int8_latency_b32_ms"] > 0
    import onnx

    ops = {node.op_type for node in onnx.load(tmp_path / "int8.onnx").graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    session = onnx_session(tmp_path / "int8.onnx")
    assert onnx_predict(session, x_test[:1]).shape == (1, 10)
