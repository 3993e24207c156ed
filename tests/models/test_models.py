"""The model zoo: every registered model honours the FeatureOutput contract on every input we use,
and the CIFAR architectures have the published parameter counts."""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kdexp.models import FeatureOutput, ZooModel, create_model, list_models, num_params
from kdexp.models.text import TEXT_MODELS
from kdexp.models.wrn import wrn

MODELS = [m for m in list_models() if m not in TEXT_MODELS]  # image models; text ones: test_text_models.py
SIZES = (8, 28, 32)
CHANNELS = (1, 3)
NUM_CLASSES = 7  # not 10 or 100, so a hard-coded class count would show


@pytest.fixture(autouse=True, scope="module")
def single_thread():
    """These are many tiny ops: threads buy nothing, and on a busy 2-core box OpenMP spin-waiting
    made the file ~8x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@functools.lru_cache(maxsize=1)  # cases are ordered by model, so each model is built once per channel count
def built(name: str, in_channels: int) -> ZooModel:
    torch.manual_seed(0)
    return create_model(name, num_classes=NUM_CLASSES, in_channels=in_channels).eval()


def meta_params(build, **kwargs) -> int:
    """Parameter count without allocating or initialising the weights."""
    with torch.device("meta"):
        return num_params(build(**kwargs))


FORWARD_CASES = [(name, c, s) for name in MODELS for c in CHANNELS for s in SIZES]


@pytest.mark.parametrize(("name", "in_channels", "size"), FORWARD_CASES, ids=lambda v: str(v))
@torch.no_grad()
def test_forward_intermediates_contract(name, in_channels, size):
    model = built(name, in_channels)
    x = torch.randn(2, in_channels, size, size)
    out = model.forward_intermediates(x)

    assert isinstance(out, FeatureOutput)
    assert out.logits.shape == (2, NUM_CLASSES)
    assert torch.isfinite(out.logits).all()
    assert len(out.stages) == len(out.preact) >= 2
    for post, pre in zip(out.stages, out.preact):
        assert post.dim() == 4 and post.shape[0] == 2
        assert pre.shape == post.shape
        # Either the point has no ReLU (post is pre) or post is exactly the ReLU of pre.
        assert torch.equal(post, pre) or torch.equal(post, F.relu(pre))
    assert out.embedding.dim() == 2 and out.embedding.shape[0] == 2
    torch.testing.assert_close(model.classifier(out.embedding), out.logits)
    torch.testing.assert_close(model(x), out.logits)


@pytest.mark.parametrize("name", MODELS)
def test_feature_shapes_probe(name):
    model = create_model(name, num_classes=NUM_CLASSES, in_channels=1).train()
    shapes = model.feature_shapes((1, 28, 28))
    assert model.training, "feature_shapes must restore the training flag"
    assert shapes.logits.shape == (2, NUM_CLASSES)
    assert [s.shape for s in shapes.stages] == [p.shape for p in shapes.preact]


@pytest.mark.parametrize("name", MODELS)
def test_gradient_reaches_first_layer_and_every_parameter(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=NUM_CLASSES, in_channels=1).train()
    model(torch.randn(2, 1, 8, 8)).logsumexp(1).sum().backward()
    first = next(m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
    assert first.weight.grad is not None and first.weight.grad.abs().sum() > 0
    unused = [n for n, p in model.named_parameters() if p.grad is None]
    assert not unused, f"parameters outside the graph: {unused}"


@pytest.mark.parametrize("name", ["resnet8", "resnet50", "wrn_16_2", "vgg8", "shufflenetv1"])
@torch.no_grad()
def test_preact_features_keep_the_negative_part(name):
    torch.manual_seed(0)
    out = create_model(name).eval().forward_intermediates(torch.randn(4, 3, 32, 32))
    assert all((s >= 0).all() for s in out.stages)
    # Every post-stem point comes from a ReLU, so its preact has real negative values.
    assert all((p < 0).any() for p in out.preact[1:])


def test_unknown_model_is_rejected_with_the_choices():
    with pytest.raises(ValueError, match="'nope'") as err:
        create_model("nope")
    assert "resnet20" in str(err.value) and "wrn_40_2" in str(err.value)


def test_model_kwargs_reach_the_constructor():
    assert create_model("wrn_16_1", dropout=0.3).stages[0][0].dropout == 0.3
    assert create_model("mlp_small", in_channels=1, pool_size=4).hidden[0].in_features == 16
    assert create_model("mobilenetv2", width_mult=1.0).stem[0].out_channels == 32


# ---- parameter counts -------------------------------------------------------------------------

# Published counts, 3 input channels. CIFAR-10: He et al. 2016 (Table 6) and Zagoruyko &
# Komodakis 2016 (Table 5). CIFAR-100: Tian et al. 2020 (CRD) / RepDistiller's model tables.
PUBLISHED_CIFAR10 = {
    "resnet20": 0.27e6, "resnet32": 0.46e6, "resnet44": 0.66e6, "resnet56": 0.85e6, "resnet110": 1.7e6,
}  # fmt: skip
PUBLISHED_WRN_CIFAR10 = {(40, 4): 8.9e6, (16, 8): 11.0e6, (28, 10): 36.5e6}
PUBLISHED_CIFAR100 = {
    "resnet8x4": 1.23e6, "resnet32x4": 7.43e6, "resnet56": 0.86e6,
    "wrn_40_2": 2.26e6, "wrn_16_2": 0.70e6, "wrn_40_1": 0.57e6,
    "vgg8": 3.96e6, "vgg13": 9.46e6, "mobilenetv2": 0.81e6,
    "shufflenetv1": 0.95e6, "shufflenetv2": 1.36e6, "resnet50": 23.7e6,
}  # fmt: skip
TOLERANCE = 0.02

# Exact counts of this build (3 channels; 10 and 100 classes), pinned so architecture changes are
# deliberate. Our resnets use projection shortcuts, hence +2,752 over the paper's option-A counts
# (resnet20 269,722 -> 272,474; resnet110 1,727,962 -> 1,730,714).
EXACT = {
    "resnet8": (78_042, 83_892), "resnet14": (175_258, 181_108), "resnet20": (272_474, 278_324),
    "resnet32": (466_906, 472_756), "resnet44": (661_338, 667_188), "resnet56": (855_770, 861_620),
    "resnet110": (1_730_714, 1_736_564), "resnet8x4": (1_210_410, 1_233_540),
    "resnet32x4": (7_410_730, 7_433_860), "resnet50": (23_520_842, 23_705_252),
    "wrn_16_1": (175_066, 180_916), "wrn_16_2": (691_674, 703_284),
    "wrn_40_1": (563_930, 569_780), "wrn_40_2": (2_243_546, 2_255_156),
    "vgg8": (3_918_858, 3_965_028), "vgg11": (9_231_114, 9_277_284), "vgg13": (9_416_010, 9_462_180),
    "vgg16": (14_728_266, 14_774_436), "vgg19": (20_040_522, 20_086_692),
    "mobilenetv2": (697_546, 812_836), "shufflenetv1": (862_768, 949_258),
    "shufflenetv2": (1_263_278, 1_355_528),  # 1x1 stem, as RepDistiller
    "cnn_tiny": (6_418, 9_388), "cnn_small": (70_618, 76_468), "cnn_medium": (328_682, 346_052),
    "cnn_lean": (58_802, 64_652),
    "mlp_small": (33_610, 39_460), "mlp_medium": (435_466, 458_596),
}  # fmt: skip


@pytest.mark.parametrize(("name", "published"), PUBLISHED_CIFAR10.items())
def test_param_count_matches_paper_cifar10(name, published):
    count = meta_params(create_model, name=name, num_classes=10)
    assert abs(count - published) <= TOLERANCE * published, f"{name}: {count:,} vs {published:,.0f}"


@pytest.mark.parametrize(("depth_widen", "published"), PUBLISHED_WRN_CIFAR10.items(), ids=str)
def test_param_count_matches_paper_wrn_cifar10(depth_widen, published):
    depth, widen = depth_widen
    count = meta_params(wrn, depth=depth, widen=widen, num_classes=10)
    assert abs(count - published) <= TOLERANCE * published, f"WRN-{depth}-{widen}: {count:,}"


@pytest.mark.parametrize(("name", "published"), PUBLISHED_CIFAR100.items())
def test_param_count_matches_literature_cifar100(name, published):
    count = meta_params(create_model, name=name, num_classes=100)
    assert abs(count - published) <= TOLERANCE * published, f"{name}: {count:,} vs {published:,.0f}"


@pytest.mark.parametrize("name", MODELS)
def test_param_count_is_pinned(name):
    if name not in EXACT:
        pytest.skip(f"{name}: no pinned parameter count yet")
    counts = tuple(meta_params(create_model, name=name, num_classes=k) for k in (10, 100))
    assert counts == EXACT[name]


def test_small_models_fit_their_documented_budgets():
    one_channel = {
        n: meta_params(create_model, name=n, in_channels=1) for n in ("cnn_tiny", "cnn_small", "cnn_lean", "cnn_medium")
    }
    assert 5e3 <= one_channel["cnn_tiny"] <= 10e3
    assert 50e3 <= one_channel["cnn_small"] <= 100e3
    assert 50e3 <= one_channel["cnn_lean"] < one_channel["cnn_small"]
    assert 300e3 <= one_channel["cnn_medium"] <= 400e3


@torch.no_grad()
def test_wrn_feature_path_equals_plain_block_composition():
    """WRN's forward_intermediates hands each stage's first block the activation it computed for the
    features; that shortcut must give the same logits as running the blocks as written."""
    torch.manual_seed(0)
    for name in ("wrn_16_1", "wrn_16_2"):  # identity and projection shortcut in the first stage
        model = create_model(name, num_classes=NUM_CLASSES).eval()
        x = torch.randn(2, 3, 16, 16)
        raw = model.stem(x)
        for stage in model.stages:
            raw = stage(raw)
        embedding = model.pool(F.relu(model.final_bn(raw))).flatten(1)
        torch.testing.assert_close(model.classifier(embedding), model(x))
