"""Augmented (consistent teaching) and quantization-aware variants: the mixing itself, what reaches the
teacher and the student, the loss terms, and the int8 conversion."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kdexp.config.errors import ConfigError
from kdexp.data import create_datamodule
from kdexp.distill import kd_loss
from kdexp.measure.metrics import accuracy_metrics, size_on_disk
from kdexp.models import create_model
from kdexp.shipping.quantization import check_quantizable, convert_int8, float_view, prepare_qat_student
from kdexp.training.evaluation import latency
from kdexp.variants.augmented import AugmentedDistillModule, BatchAugmenter, loss_weights, online_teacher
from kdexp.variants.quantized import int8_metrics


def batch(n=8, c=1, size=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, c, size, size, generator=g), torch.arange(n) % 3


# -- augmentation ------------------------------------------------------------------------------------------

def test_mixup_draws_lambda_from_the_seeded_beta_and_mixes_with_a_seeded_permutation():
    x, y = batch()
    aug = BatchAugmenter("mixup", alpha=0.4, seed=3)
    out = aug(x, y)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(3))
    lam = np.random.default_rng(3).beta(0.4, 0.4)
    assert out.lam == pytest.approx(lam)
    torch.testing.assert_close(out.x, lam * x + (1 - lam) * x[perm])
    assert torch.equal(out.y_a, y) and torch.equal(out.y_b, y[perm])
    again = BatchAugmenter("mixup", alpha=0.4, seed=3)(x, y)
    assert again.lam == out.lam and torch.equal(again.x, out.x)  # same seed, same batch
    assert aug(x, y).lam != out.lam  # the generator moves on


def test_cutmix_pastes_one_box_from_the_partner_and_lambda_is_the_kept_area():
    n, size = 6, 16
    x = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 2, size, size).clone()  # sample i is all i
    y = torch.arange(n)
    aug = BatchAugmenter("cutmix", alpha=1.0, seed=1)
    for _ in range(5):
        out = aug(x, y)
        changed = out.x != x  # (n, C, H, W)
        partner = out.y_b  # labels == sample ids here
        area = (1 - out.lam) * size * size
        for i in range(n):
            if partner[i] == i:
                continue
            box = changed[i, 0]
            rows, cols = box.any(1).nonzero().squeeze(1), box.any(0).nonzero().squeeze(1)
            assert box.sum() == pytest.approx(area)  # the labels' λ is the box's true area
            if len(rows):  # a rectangle, the same in every channel, holding the partner's pixels
                assert box.sum() == len(rows) * len(cols)
                assert torch.equal(changed[i, 0], changed[i, 1])
                assert (out.x[i, :, box] == float(partner[i])).all()


def test_cutmix_box_area_follows_lambda_before_clipping():
    aug = BatchAugmenter("cutmix", alpha=1.0, seed=0)
    top, left, h, w = aug.cutmix_box(32, 32, lam=0.75)  # side = 32 * sqrt(0.25) = 16
    assert h <= 16 and w <= 16 and 0 <= top and top + h <= 32 and 0 <= left and left + w <= 32


def test_erasing_keeps_labels_and_erases_boxes_of_the_configured_area():
    x, y = batch(n=64, size=16)
    out = BatchAugmenter("erasing", seed=0, erase_prob=1.0, erase_scale=(0.1, 0.2))(x, y)
    assert out.lam == 1.0 and torch.equal(out.y_a, y) and torch.equal(out.y_b, y)
    fractions = (out.x != x)[:, 0].float().mean((1, 2))
    assert (fractions > 0.05).all() and (fractions < 0.3).all()  # rounding of box sides aside
    none = BatchAugmenter("erasing", seed=0, erase_prob=0.0)(x, y)
    assert torch.equal(none.x, x)


def test_bad_augmentation_settings_are_config_errors():
    with pytest.raises(ConfigError, match="variant.policy"):
        BatchAugmenter("autoaugment")
    with pytest.raises(ConfigError, match="alpha"):
        BatchAugmenter("mixup", alpha=0.0)


class SpyModule(AugmentedDistillModule):
    """Records which tensor each model's forward receives."""

    def _outputs(self, model, x):
        self.seen.append(("teacher" if model is self.teacher else "student", x))
        return super()._outputs(model, x)


def spy(policy="mixup", weights=None, seed=5):
    student, teacher = create_model("cnn_tiny", in_channels=1), create_model("cnn_small", in_channels=1)
    module = SpyModule(student, augmenter=BatchAugmenter(policy, alpha=1.0, seed=seed), teacher=teacher,
                       weights=weights or {"kd": 1.0}, temperature=4.0)
    module.seen = []
    return module


@pytest.mark.parametrize("policy", ["mixup", "cutmix", "erasing"])
def test_teacher_sees_exactly_the_students_augmented_input(policy):
    module = spy(policy)
    x, y = batch()
    module.loss_terms(x, y, torch.arange(len(y)))
    (who_s, xs), (who_t, xt) = module.seen
    assert (who_s, who_t) == ("student", "teacher")
    assert xt is xs  # the same tensor object, not a second draw
    expected = BatchAugmenter(policy, alpha=1.0, seed=5)(x, y).x
    assert torch.equal(xs, expected) and not torch.equal(xs, x)


def test_loss_is_kd_only_by_default_and_ce_uses_mixed_targets_when_enabled():
    conf = {"distill": {"weights": {"ce": 0.1, "kd": 0.9}}, "variant": {"ce_weight": 0.0}}
    assert loss_weights(conf) == {"ce": 0.0, "kd": 0.9}
    module = spy(weights=loss_weights(conf))
    x, y = batch()
    terms, _ = module.loss_terms(x, y, torch.arange(len(y)))
    assert set(terms) == {"kd"}  # function matching: no hard-label term

    module = spy(weights={"ce": 0.5, "kd": 1.0})
    terms, logits = module.loss_terms(x, y, torch.arange(len(y)))
    mixed = BatchAugmenter("mixup", alpha=1.0, seed=5)(x, y)
    expected_ce = mixed.lam * F.cross_entropy(logits, mixed.y_a) + (1 - mixed.lam) * F.cross_entropy(logits, mixed.y_b)
    torch.testing.assert_close(terms["ce"], expected_ce)
    with torch.no_grad():
        t_logits = module.teacher(mixed.x)
    torch.testing.assert_close(terms["kd"], kd_loss(logits, t_logits, 4.0))
    with pytest.raises(ConfigError, match="every loss weight is 0"):
        loss_weights({"distill": {"weights": {"ce": 1.0}}, "variant": {"ce_weight": 0.0}})


def test_teacher_runs_online_cached_outputs_refused():
    conf = online_teacher({"teacher_cache": {"mode": "auto", "views": 0}})
    assert conf["teacher_cache"]["mode"] == "off"
    with pytest.raises(ConfigError, match="teacher_cache.mode=on"):
        online_teacher({"teacher_cache": {"mode": "on"}})
    with pytest.raises(RuntimeError, match="online"):
        spy().use_teacher_outputs(object())


# -- quantization ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def converted():
    torch.manual_seed(0)
    model = create_model("cnn_small", in_channels=1)
    qat = prepare_qat_student(model, "x86")
    with torch.no_grad():
        for _ in range(3):  # let the observers see data
            qat(torch.randn(16, 1, 16, 16))
    return model, qat, convert_int8(qat)


def test_converted_student_is_really_int8(converted):
    from torch.ao.nn.intrinsic.quantized import ConvReLU2d
    from torch.ao.nn.quantized import Conv2d, Linear, Quantize

    model, qat, int8 = converted
    kinds = {type(m) for m in int8.modules()}
    assert {Quantize, Conv2d, ConvReLU2d, Linear} <= kinds  # conv+BN+ReLU fused, then quantized
    assert not any(isinstance(m, (torch.nn.Conv2d, torch.nn.BatchNorm2d)) and type(m).__module__.startswith("torch.nn.")
                   for m in int8.modules())
    convs = [m for m in int8.modules() if isinstance(m, (Conv2d, ConvReLU2d))]
    assert all(m.weight().dtype == torch.qint8 for m in convs)
    assert int8.quant(torch.zeros(1, 1, 16, 16)).dtype == torch.quint8
    assert size_on_disk(int8) < 0.35 * size_on_disk(model)  # ~1/4: int8 weights plus scales and zero points


def test_int8_model_follows_the_fake_quantized_one(converted):
    _, qat, int8 = converted
    x = torch.randn(32, 1, 16, 16)
    qat.eval()
    with torch.no_grad():
        fake, real, plain = qat(x), int8(x), float_view(qat)(x)
    step = int8.model.classifier.scale  # one step of the int8 output
    assert (fake - real).abs().mean() < 3 * step  # rounding differs in a few places, nothing more
    assert torch.corrcoef(torch.stack([fake.flatten(), real.flatten()]))[0, 1] > 0.95
    assert not torch.equal(fake, plain)  # float_view really switches fake quantization off


def test_resnet_residual_adds_are_quantized():
    from torch.ao.nn.quantized import QFunctional

    qat = prepare_qat_student(create_model("resnet8", in_channels=1), "x86")
    with torch.no_grad():
        qat(torch.randn(4, 1, 8, 8))
    int8 = convert_int8(qat)
    assert any(isinstance(m, QFunctional) for m in int8.modules())
    assert int8(torch.randn(2, 1, 8, 8)).shape == (2, 10)


def test_unsupported_architectures_fail_before_training():
    with pytest.raises(ConfigError, match="cannot be converted to int8"):
        check_quantizable(create_model("wrn_16_1", in_channels=1), (1, 8, 8), "x86", "wrn_16_1")
    with pytest.raises(ConfigError, match="variant.backend"):
        prepare_qat_student(create_model("cnn_tiny", in_channels=1), "tpu")


def test_int8_accuracy_is_measured_on_the_test_split(converted):
    dm = create_datamodule("synthetic", num_samples=200, num_test=64, image_size=16, in_channels=1, seed=0)
    dm.setup()
    model, _, int8 = converted
    ctx = SimpleNamespace(dm=dm, test={}, timed={}, input_shape=dm.input_shape,
                          conf={"data": {}, "eval": {"ece_bins": 15, "latency_batch": 8, "latency_repeats": 2}})
    metrics = int8_metrics(ctx, int8, model)
    x, y = dm.split_tensors("test")
    with torch.no_grad():
        expected = accuracy_metrics(int8(x), y)["top1"]
    assert metrics["test_top1"] == pytest.approx(expected)
    assert ctx.test["student"].shape == (64, 10)  # kept for agreement with the teacher
    assert metrics["size_bytes"] == size_on_disk(int8)
    assert metrics["params"] == sum(p.numel() for p in model.parameters())
    timed = latency(ctx, {"student": int8, "student/float": model})  # int8 and float in the same blocks
    assert timed["student/latency_b1_ms"] > 0 and timed["student/float/latency_b8_ms"] > 0
    assert timed["student/latency_b8_iqr_ms"] >= 0 and timed["student/float/latency_noisy"] in (0.0, 1.0)


# -- through the pipeline: bad combinations fail before anything is trained -------------------------------

@pytest.fixture(scope="module")
def shared_store(tmp_path_factory) -> str:
    """One MLflow store for these cases: creating its tables is most of their cost."""
    return f"tracking.uri=sqlite:///{tmp_path_factory.mktemp('store') / 'mlflow.db'}"


@pytest.mark.parametrize("overrides, message", [
    (["variant=quantized", "student=wrn_16_1"], "cannot be converted to int8"),
    (["variant=quantized", "distill=fitnet"], "needs features"),
    (["variant=augmented", "teacher_cache.mode=on"], "teacher_cache.mode=on"),
    (["variant=augmented", "distill=none"], "every loss weight is 0"),
])
def test_bad_variant_combinations_fail_before_training(tiny_overrides, tmp_path, shared_store, overrides, message):
    from kdexp.variants import run_experiment
    from tests.conftest import compose_train

    cfg = compose_train([*tiny_overrides, "data.num_samples=100", "data.image_size=8", shared_store, *overrides])
    with pytest.raises(ConfigError, match=message):
        run_experiment(cfg, tmp_path)
    assert not (tmp_path / "outputs" / "cache").exists()  # no teacher was trained
