"""timm and torchvision models by name (kdexp.models.hub): built for the data, features for feature methods,
checkpoints, and one-line errors for unknown names and an unreachable hub. Skipped where timm/torchvision do
not import (the core install; docs/models.md says how to make a venv that has them)."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kdexp.config.errors import ConfigError


def need(library: str):
    try:
        return importlib.import_module(library)
    except Exception as exc:  # absent, or built for another torch (torchvision::nms missing)
        pytest.skip(f"{library} does not import here: {exc}")


@pytest.mark.parametrize("name, lib", [("timm:resnet18", "timm"), ("tv:mobilenet_v3_small", "torchvision"),
                                       ("tv:resnet18", "torchvision")])
def test_hub_models_take_classes_and_channels_from_the_data_and_expose_features(name, lib):
    need(lib)
    from kdexp.models import create_model

    model = create_model(name, num_classes=7, in_channels=1).eval()
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        out, logits = model.forward_intermediates(x), model(x)
    assert logits.shape == (2, 7)
    torch.testing.assert_close(out.logits, logits, rtol=0, atol=0)
    sizes = [s.shape[-1] for s in out.stages]
    assert sizes == [16, 8, 4, 2, 1] and out.preact == out.stages  # one map per resolution, in forward order
    assert out.embedding.shape[0] == 2 and out.embedding.dim() == 2
    assert model.feature_shapes((1, 32, 32)).embedding.shape == out.embedding.shape


def test_a_hub_model_loads_its_library_checkpoint_with_equal_logits(tmp_path):
    timm = need("timm")
    from kdexp.caching.models import load_weights
    from kdexp.models import create_model

    torch.manual_seed(0)
    theirs = timm.create_model("resnet18", num_classes=5).eval()
    path = tmp_path / "resnet18.pth"
    torch.save(theirs.state_dict(), path)  # timm's own format: a bare state dict
    ours = load_weights(create_model("timm:resnet18", num_classes=5), path, "teacher.ckpt").eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), rtol=0, atol=0)


@pytest.mark.parametrize("name, lib, nearest", [("timm:resnet81", "timm", "timm:resnet18"),
                                                ("tv:mobilenet_v3_smal", "torchvision", "tv:mobilenet_v3_small")])
def test_an_unknown_name_names_the_nearest(name, lib, nearest):
    need(lib)
    from kdexp.models.hub import check_name

    with pytest.raises(ConfigError, match=f"student.arch='{name}' is invalid: .* nearest: {nearest}"):
        check_name("student.arch", name)


def kdexp_train(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "KDEXP_OFFLINE": "1", **env}
    env.pop("MLFLOW_TRACKING_URI", None)
    exe = Path(sys.executable).parent / "kdexp-train"
    return subprocess.run([str(exe), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def one_error_line(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, result.stderr[-2000:]
    (line,) = [x for x in result.stderr.splitlines() if x.startswith("kdexp-train: error:")]
    return line


@pytest.mark.e2e
@pytest.mark.slow
def test_cli_distills_a_tv_student_from_a_timm_teacher_with_a_feature_method(tmp_path):
    need("timm"), need("torchvision")
    tiny = ["data=synthetic", "data.num_samples=200", "data.num_test=64", "data.image_size=64", "data.in_channels=1",
            "data.num_classes=4", "trainer=debug", "baseline=false", "eval.latency_repeats=1",
            "eval.latency_batch=4", "tracking.export_student=false"]
    good = kdexp_train(*tiny, "teacher.arch=timm:resnet18", "student.arch=tv:mobilenet_v3_small", "distill=at",
                       cwd=tmp_path)
    assert good.returncode == 0, good.stderr[-3000:]
    bad = kdexp_train(*tiny, "teacher.arch=timm:resnet18", "student.arch=tv:mobilenet_v3_smal", cwd=tmp_path)
    assert "nearest: tv:mobilenet_v3_small" in one_error_line(bad)
    # An unreachable hub (a proxy on a closed port): one line saying how to pass the weights instead.
    offline = kdexp_train(*tiny, "teacher.arch=tv:resnet18", "teacher.kwargs.pretrained=true", cwd=tmp_path,
                          HTTPS_PROXY="http://127.0.0.1:9", HTTP_PROXY="http://127.0.0.1:9",
                          TORCH_HOME=str(tmp_path / "hub"))
    assert "pretrained weights could not be downloaded" in one_error_line(offline)
    assert "teacher.ckpt=PATH" in one_error_line(offline)


def test_the_core_install_does_not_import_timm_or_torchvision():
    code = ("import sys; from kdexp.models import create_model; create_model('resnet8');"
            "from kdexp.config.validate import validate_config;"
            "print(sorted(m for m in ('timm', 'torchvision') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"


def test_a_hub_name_without_its_library_or_with_an_unknown_prefix_is_one_config_error():
    from kdexp.models.hub import check_name

    with pytest.raises(ConfigError, match=r"teacher.arch='hf:bert' is invalid: unknown library 'hf'; use timm:NAME"):
        check_name("teacher.arch", "hf:bert")
    try:
        importlib.import_module("timm")
    except Exception:
        needs = r"teacher.arch='timm:resnet18' needs timm, .* pip install 'kdexp\[vision\]'"
        with pytest.raises(ConfigError, match=needs):
            check_name("teacher.arch", "timm:resnet18")
    else:
        check_name("teacher.arch", "timm:resnet18")  # where timm imports, the name is accepted
