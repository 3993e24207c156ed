"""The int8 student of `variant=quantized` in a runnable, portable form: an ONNX QDQ model.

Why ONNX QDQ (and not torch.export): on torch 2.13 neither route works from what torch.ao eager mode gives us.
The converted int8 model holds quantized packed-parameter objects that `torch.export` cannot flatten
("Conv2dPackedParamsBase does not have a field __obj_flatten__"), and the QAT model's fused fake-quant op
(`fused_moving_avg_obs_fake_quant`) has no ONNX translation in either torch exporter. So we export the QAT
student's *float* weights (conv+BN folded by the QAT modules' own `to_float()`, fake quantization removed)
and let ONNX Runtime's static quantizer turn it into QDQ: int8 weights per channel (symmetric), uint8
activations per tensor, ranges calibrated (min/max) on training images, the scheme of torch's x86 QAT qconfig.
The weights are the ones QAT trained to survive int8 rounding; the activation ranges are recalibrated rather
than copied from the QAT observers, so the ONNX model is compared with torch's int8 model by top-1 agreement,
not by a tolerance. ONNX Runtime fuses the QDQ pairs into real int8 kernels (QLinearConv, ...).
"""

from __future__ import annotations

import copy
import logging
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from kdexp.shipping.export import export_onnx, onnx_predict, onnx_runner, onnx_session, quiet_export, session_latency

CALIBRATION_BATCH = 64
QAT_PACKAGES = ("torch.ao.nn.qat", "torch.ao.nn.intrinsic.qat")


def float_model_from_qat(qat: nn.Module) -> nn.Module:
    """The QAT model as a plain float model: fused QAT modules -> float modules (BN folded into the conv),
    fake-quantize modules -> Identity (Quant/DeQuantStubs are identities already)."""
    from torch.ao.quantization.fake_quantize import FakeQuantizeBase

    model = copy.deepcopy(qat).cpu().eval()
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, FakeQuantizeBase):
                setattr(module, name, nn.Identity())
            elif hasattr(child, "to_float") and type(child).__module__.startswith(QAT_PACKAGES):
                setattr(module, name, child.to_float().eval())
    return model


class _Calibration:
    """onnxruntime.quantization.CalibrationDataReader over a tensor, in batches."""

    def __init__(self, x: Tensor, input_name: str):
        x = x.detach().float().cpu().numpy()
        self._batches = iter([{input_name: x[i : i + CALIBRATION_BATCH]} for i in range(0, len(x), CALIBRATION_BATCH)])

    def get_next(self):
        return next(self._batches, None)


def export_int8_onnx(qat: nn.Module, calibration: Tensor, path: str | Path,
                     float_path: str | Path | None = None) -> Path:
    """QDQ int8 ONNX model of a QAT student; `calibration`: a few hundred training images (normalized)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="kdexp-int8-") as tmp:
        float_path = Path(float_path) if float_path is not None else Path(tmp) / "float.onnx"
        export_onnx(float_model_from_qat(qat), calibration[:2], float_path)
        root = logging.getLogger()
        level = root.level
        root.setLevel(logging.ERROR)  # the quantizer logs advice on pre-processing at WARNING on the root logger
        try:
            with quiet_export():
                quantize_static(str(float_path), str(path), _Calibration(calibration, "input"),
                                quant_format=QuantFormat.QDQ, per_channel=True, activation_type=QuantType.QUInt8,
                                weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax)
        finally:
            root.setLevel(level)
    return path


@torch.inference_mode()
def int8_onnx_metrics(qat: nn.Module, int8: nn.Module, calibration: Tensor, x: Tensor, y: Tensor | None = None,
                      batch: int = 256, *, path: str | Path | None = None, float_path: str | Path | None = None,
                      repeats: int = 20) -> dict[str, float]:
    """Export the int8 ONNX model (at `path`, else temporarily) and compare it with torch's `int8` model on `x`.

    Returns onnx_int8_size_bytes, onnx_float_size_bytes (the float ONNX of the same weights),
    onnx_int8_size_ratio, onnx_int8_agreement (top-1 agreement with torch's int8 model), onnx_int8_top1 (when
    labels `y` are given), and the int8 file timed interleaved with the float one (export.session_latency):
    onnx_int8_latency_b1_ms / _b<batch>_ms (+ _iqr_ms), onnx_int8_speedup_b1 / _b<batch> (float / int8; + _iqr)
    and onnx_int8_latency_noisy.
    """
    with tempfile.TemporaryDirectory(prefix="kdexp-int8-") as tmp:
        target = Path(path) if path is not None else Path(tmp) / "student_int8.onnx"
        float_target = Path(float_path) if float_path is not None else Path(tmp) / "student_float.onnx"
        export_int8_onnx(qat, calibration, target, float_target)
        session, float_session = onnx_session(target), onnx_session(float_target)
        out = {"onnx_int8_size_bytes": float(target.stat().st_size),
               "onnx_float_size_bytes": float(float_target.stat().st_size)}
    out["onnx_int8_size_ratio"] = out["onnx_int8_size_bytes"] / out["onnx_float_size_bytes"]
    predicted = onnx_predict(session, x).argmax(1)
    torch_int8 = torch.cat([int8(x[i : i + 1024].cpu()) for i in range(0, len(x), 1024)]).argmax(1).numpy()
    out["onnx_int8_agreement"] = float((predicted == torch_int8).mean())
    if y is not None:
        out["onnx_int8_top1"] = float((predicted == np.asarray(y.cpu())).mean())
    shape = tuple(x.shape[1:])
    out.update(session_latency(session, onnx_runner(float_session, shape), shape, batch, repeats, "onnx_int8"))
    return out
