"""Shared test helpers for the distillation tests (tiny nets, identity adapters) and the tests of
kdexp/distill/common.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kdexp.distill import IncompatiblePairError, kd_loss
from kdexp.distill.common import align_spatial, stage_pairs, warmup_factor
from kdexp.models.base import FeatureOutput, ZooModel


class TinyNet(ZooModel):
    """A few conv+BN stages (post-ReLU `stages`, pre-ReLU `preact`), pooled embedding, linear head."""

    def __init__(self, widths=(4, 6, 8), strides=(1, 2, 2), in_channels=3, num_classes=5):
        super().__init__()
        ins = (in_channels, *widths[:-1])
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Conv2d(i, o, 3, stride=s, padding=1, bias=False), nn.BatchNorm2d(o))
            for i, o, s in zip(ins, widths, strides)
        )
        self.classifier = nn.Linear(widths[-1], num_classes)

    def forward_intermediates(self, x):
        stages, preact = [], []
        for block in self.blocks:
            pre = block(x)
            x = F.relu(pre)
            preact.append(pre)
            stages.append(x)
        embedding = x.mean(dim=(2, 3))
        return FeatureOutput(self.classifier(embedding), stages, preact, embedding)


def make_identity(module: nn.Module) -> nn.Module:
    """Adapters -> identity (rectangular where shapes differ): 1x1/3x3 convs pass channel c to c,
    BN becomes exactly x (eval, zero eps, unit stats), linear layers pass coordinates through."""
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.zero_()
                k = m.kernel_size[0] // 2
                m.weight[:, :, k, k] = torch.eye(m.out_channels, m.in_channels)
                if m.bias is not None:
                    m.bias.zero_()
            elif isinstance(m, nn.BatchNorm2d):
                m.reset_parameters()
                m.eps = 0.0
                m.eval()
            elif isinstance(m, nn.Linear):
                m.weight.copy_(torch.eye(m.out_features, m.in_features))
                m.bias.zero_()
    return module


def features(stages, embedding=None, logits=None, preact=None) -> FeatureOutput:
    """FeatureOutput from numpy arrays / tensors (float32 tensors; grads where asked by caller)."""
    t = [torch.as_tensor(np.asarray(s), dtype=torch.float32) for s in stages]
    return FeatureOutput(
        logits=None if logits is None else torch.as_tensor(logits, dtype=torch.float32),
        stages=t,
        preact=t if preact is None else [torch.as_tensor(np.asarray(p), dtype=torch.float32) for p in preact],
        embedding=None if embedding is None else torch.as_tensor(embedding, dtype=torch.float32),
    )


def np_avg_pool(x: np.ndarray, size: int) -> np.ndarray:
    """Adaptive average pooling to size x size where the input size is a multiple of it."""
    n, c, h, w = x.shape
    return x.reshape(n, c, size, h // size, size, w // size).mean(axis=(3, 5))


# -- common.py -----------------------------------------------------------------------------


def test_stage_pairs_match_the_deepest_stages_and_skip_the_stem():
    assert stage_pairs(4, 4, "m") == [(1, 1), (2, 2), (3, 3)]
    assert stage_pairs(6, 4, "m") == [(3, 1), (4, 2), (5, 3)]  # vgg-like student, resnet-like teacher
    assert stage_pairs(3, 5, "m", skip_stem=False) == [(0, 2), (1, 3), (2, 4)]
    with pytest.raises(IncompatiblePairError, match="m: no stage to pair"):
        stage_pairs(1, 4, "m")


def test_align_spatial_pools_the_larger_map_per_axis():
    a, b = torch.arange(16.0).view(1, 1, 4, 4), torch.zeros(1, 2, 2, 8)
    pa, pb = align_spatial(a, b)
    assert pa.shape == (1, 1, 2, 4) and pb.shape == (1, 2, 2, 4)
    # rows pooled in pairs, columns untouched
    np.testing.assert_allclose(pa[0, 0].numpy(), [[2, 3, 4, 5], [10, 11, 12, 13]])
    np.testing.assert_allclose(
        np_avg_pool(np.arange(16.0).reshape(1, 1, 4, 4), 2)[0, 0], [[2.5, 4.5], [10.5, 12.5]]
    )


def test_warmup_factor_is_linear_from_the_first_epoch():
    assert warmup_factor(0, 20) == pytest.approx(1 / 20)
    assert warmup_factor(9, 20) == pytest.approx(0.5)
    assert warmup_factor(19, 20) == 1.0 and warmup_factor(500, 20) == 1.0
    assert warmup_factor(0, 0) == 1.0


def test_kd_loss_matches_hand_computed_value_with_t_squared():
    s = np.array([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]])
    t = np.array([[2.0, 0.0, 1.0], [1.0, 1.0, 1.0]])
    T = 4.0

    def softmax(z):
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    p_s, p_t = softmax(s / T), softmax(t / T)
    expected = (p_t * (np.log(p_t) - np.log(p_s))).sum(axis=1).mean() * T**2
    got = kd_loss(torch.tensor(s), torch.tensor(t), T)
    assert float(got) == pytest.approx(expected, rel=1e-10)
    # the T^2 factor: the same distributions at T=1 give exactly 1/16 of this value
    assert float(kd_loss(torch.tensor(s / T), torch.tensor(t / T), 1.0)) == pytest.approx(expected / 16)
