"""Checkpoints from the field load into the zoo with their logits: RepDistiller/mdistiller `{'model': ...}`,
torchvision ResNet-50 weights, Lightning checkpoints; a checkpoint that does not map fails naming the tensor."""

from __future__ import annotations

import pytest
import torch

from kdexp.caching.models import load_weights
from kdexp.models import create_model
from tests.models import field_nets

# RepDistiller/mdistiller name -> the zoo's (their model_dict keys; mdistiller's cifar_model_dict is the same).
ZOO = {**{n: n for n in ("resnet8", "resnet14", "resnet20", "resnet32", "resnet44", "resnet56", "resnet110",
                          "resnet8x4", "resnet32x4", "wrn_16_1", "wrn_16_2", "wrn_40_1", "wrn_40_2",
                          "vgg8", "vgg11", "vgg13", "vgg16", "vgg19")},
       "MobileNetV2": "mobilenetv2", "ShuffleV1": "shufflenetv1", "ShuffleV2": "shufflenetv2", "ResNet50": "resnet50"}
FAST = {"resnet8", "resnet20", "resnet8x4", "wrn_16_1", "wrn_16_2", "vgg8"}  # one or two of each family


def logits_after_loading(field: torch.nn.Module, zoo: torch.nn.Module, path, x):
    load_weights(zoo, path, "teacher.ckpt")
    with torch.no_grad():
        return field(x), zoo.eval()(x)


def assert_same_logits(theirs, ours):
    # Summation order differs (e.g. AvgPool2d(8) vs adaptive pooling): equal up to float32 rounding.
    assert theirs.shape == ours.shape
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5 * float(theirs.abs().max()))


@pytest.mark.parametrize("name", [n if n in FAST else pytest.param(n, marks=pytest.mark.slow) for n in ZOO])
def test_published_cifar_checkpoint_loads_with_equal_logits(tmp_path, name):
    torch.manual_seed(0)
    field = field_nets.build(name, num_classes=100)
    path = tmp_path / "ckpt_epoch_240.pth"
    torch.save({"epoch": 240, "model": field.state_dict(), "accuracy": torch.tensor(79.4)}, path)
    x = torch.randn(4, 3, 32, 32)
    theirs, ours = logits_after_loading(field, create_model(ZOO[name], num_classes=100), path, x)
    assert_same_logits(theirs, ours)


def test_dataparallel_prefix_and_lightning_checkpoints_load(tmp_path):
    torch.manual_seed(1)
    field = field_nets.build("resnet8x4", num_classes=10)
    x = torch.randn(2, 3, 32, 32)
    wrapped = tmp_path / "dp.pth"  # saved from nn.DataParallel: every name under module.
    torch.save({"model": {f"module.{k}": v for k, v in field.state_dict().items()}}, wrapped)
    assert_same_logits(*logits_after_loading(field, create_model("resnet8x4"), wrapped, x))
    # mdistiller's whole-distiller checkpoint: the student and the teacher under module.; the teacher fits here.
    distiller = tmp_path / "best"
    student = create_model("resnet8")
    torch.save({"epoch": 240, "model": {**{f"module.student.{k}": v for k, v in student.state_dict().items()},
                                        **{f"module.teacher.{k}": v for k, v in field.state_dict().items()}}},
               distiller)
    assert_same_logits(*logits_after_loading(field, create_model("resnet8x4"), distiller, x))
    # A Lightning checkpoint of a distillation: the student (another architecture) is tried first, then teacher.
    student = create_model("resnet8")
    lightning = tmp_path / "last.ckpt"
    torch.save({"epoch": 3, "state_dict": {**{f"student.{k}": v for k, v in student.state_dict().items()},
                                          **{f"teacher.{k}": v for k, v in field.state_dict().items()}}}, lightning)
    assert_same_logits(*logits_after_loading(field, create_model("resnet8x4"), lightning, x))
    own = create_model("resnet8")
    load_weights(own, lightning, "teacher.ckpt")
    assert all(torch.equal(a, b) for a, b in zip(own.state_dict().values(), student.state_dict().values()))


@pytest.mark.slow
def test_torchvision_resnet50_weights_load_into_the_imagenet_stem(tmp_path):
    torch.manual_seed(2)
    field = field_nets.build("tv_resnet50", num_classes=1000)
    path = tmp_path / "resnet50-19c8e357.pth"  # torchvision's early files have no num_batches_tracked
    torch.save({k: v for k, v in field.state_dict().items() if not k.endswith("num_batches_tracked")}, path)
    x = torch.randn(2, 3, 64, 64)
    zoo = create_model("resnet50", num_classes=1000, stem="imagenet")
    assert_same_logits(*logits_after_loading(field, zoo, path, x))
    with pytest.raises(ValueError, match=r"tensor #0 'conv1.weight' \(64, 3, 7, 7\) does not match the model's "
                                         r"'stem.0.weight' \(64, 3, 3, 3\)"):
        load_weights(create_model("resnet50", num_classes=1000), path, "teacher.ckpt")


def test_a_checkpoint_that_does_not_map_names_the_first_mismatch_and_loads_nothing(tmp_path):
    path = tmp_path / "vgg8.pth"
    torch.save({"model": field_nets.build("vgg8", num_classes=100).state_dict()}, path)
    vgg13 = create_model("vgg13", num_classes=100)
    before = {k: v.clone() for k, v in vgg13.state_dict().items()}
    with pytest.raises(ValueError) as err:
        load_weights(vgg13, path, "teacher.ckpt (vgg13, 100 classes)")
    message = str(err.value)
    assert "\n" not in message
    assert ("teacher.ckpt (vgg13, 100 classes): checkpoint" in message and "tensor #6 'block1.0.weight' "
            "(128, 64, 3, 3) does not match the model's 'stem.3.weight' (64, 64, 3, 3)" in message), message
    assert all(torch.equal(before[k], v) for k, v in vgg13.state_dict().items())
    with pytest.raises(ValueError, match=r"'classifier.0.weight' \(100, 1280\) does not match the model's "
                                         r"'classifier.weight' \(10, 1280\)"):
        path = tmp_path / "mobile.pth"
        torch.save({"model": field_nets.build("MobileNetV2", num_classes=100).state_dict()}, path)
        load_weights(create_model("mobilenetv2", num_classes=10), path, "teacher.ckpt")


@pytest.mark.e2e
@pytest.mark.slow
def test_the_cli_distills_from_a_published_checkpoint_and_refuses_one_that_does_not_map(tmp_path):
    from tests.e2e.test_cli import kdexp_train

    path = tmp_path / "vgg8_vanilla.pth"
    torch.save({"model": field_nets.build("vgg8", num_classes=10).state_dict()}, path)
    tiny = ["data=synthetic", "data.num_samples=200", "data.num_test=64", "data.image_size=32", "student=cnn_tiny",
            "trainer=debug", "baseline=false", "eval.latency_repeats=1", "eval.latency_batch=4",
            "tracking.export_student=false", f"teacher.ckpt={path}"]
    good = kdexp_train(*tiny, "teacher=vgg8", cwd=tmp_path)
    assert good.returncode == 0, good.stderr[-3000:]
    bad = kdexp_train(*tiny, "teacher=vgg13", cwd=tmp_path)
    assert bad.returncode == 2
    (line,) = [x for x in bad.stderr.splitlines() if x.startswith("kdexp-train: error:")]
    assert "teacher.ckpt (vgg13, 10 classes)" in line and "(128, 64, 3, 3)" in line and "(64, 64, 3, 3)" in line
