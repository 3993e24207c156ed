"""Small models for 8x8 (sklearn digits) and 28x28 (MNIST / Fashion-MNIST) inputs that train in
seconds to minutes on a 2-core CPU. All pool adaptively, so any input size works; the CNNs have the
same stem/stage feature points as the CIFAR zoo so every distiller applies to them.

Parameter counts are for 1 input channel and 10 classes:
  cnn_tiny    ~6.3k   student for digits: 3 convs (8-16-32 channels)
  cnn_small   ~70k    student for MNIST, or teacher for cnn_tiny on digits: 5 convs (16-32-64)
  cnn_lean    ~59k    mid-size student at about half cnn_small's step time: an 8-channel stem, one
                      conv at 14x14, cnn_small's two 64-channel convs at 7x7 (full-resolution convs
                      dominate the cost of these small networks on a CPU)
  cnn_medium  ~330k   teacher for digits/MNIST: 6 convs (32-48-96-192)
  mlp_small   ~17k    logit-only student: 8x8-pooled input, hidden 128-64
  mlp_medium  ~234k   MLP teacher/student: 14x14-pooled input, hidden 512-256 (Hinton et al.'s
                      MNIST MLPs in miniature)
"""

from __future__ import annotations

import itertools

import torch.nn.functional as F
from torch import Tensor, nn

from kdexp.models import register_model
from kdexp.models.base import FeatureOutput, ZooModel
from kdexp.models.layers import ReluOutput, StagedModel, conv_bn


class SmallCNN(StagedModel):
    """conv-BN-ReLU stem, then stages of conv-BN-ReLU layers whose first conv has stride 2."""

    def __init__(self, stem_width: int, stages: list[list[int]], num_classes: int = 10, in_channels: int = 3):
        stem = ReluOutput(*conv_bn(in_channels, stem_width))
        blocks, in_ch = [], stem_width
        for widths in stages:
            layers: list[nn.Module] = []
            for i, out_ch in enumerate(widths):
                layers += [*conv_bn(in_ch, out_ch, 3, 2 if i == 0 else 1), nn.ReLU(inplace=True)]
                in_ch = out_ch
            blocks.append(ReluOutput(*layers[:-1]))  # last ReLU applied by ReluOutput, for preact
        super().__init__(stem, blocks, in_ch, num_classes, in_channels)


class MLP(ZooModel):
    """Adaptive average pool to `pool_size`^2 pixels, flatten, Linear-ReLU hidden layers, classifier.
    Pooling to a fixed size (instead of fixing the input size) lets one model take any image size."""

    def __init__(self, hidden: list[int], pool_size: int = 8, num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        self.num_classes, self.in_channels = num_classes, in_channels
        self.pool = nn.AdaptiveAvgPool2d(pool_size)
        widths = [in_channels * pool_size**2, *hidden]
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(widths))
        self.classifier = nn.Linear(widths[-1], num_classes)
        for layer in self.hidden:  # He init keeps activations from shrinking layer to layer
            nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
            nn.init.zeros_(layer.bias)

    def forward_intermediates(self, x: Tensor) -> FeatureOutput:
        x = self.pool(x).flatten(1)
        stages, preact = [], []
        for layer in self.hidden:
            pre = layer(x)
            x = F.relu(pre)
            stages.append(x[:, :, None, None])
            preact.append(pre[:, :, None, None])
        return FeatureOutput(self.classifier(x), stages, preact, x)


@register_model()
def cnn_tiny(num_classes: int = 10, in_channels: int = 3) -> SmallCNN:
    return SmallCNN(8, [[16], [32]], num_classes, in_channels)


@register_model()
def cnn_small(num_classes: int = 10, in_channels: int = 3) -> SmallCNN:
    return SmallCNN(16, [[32, 32], [64, 64]], num_classes, in_channels)


@register_model()
def cnn_lean(num_classes: int = 10, in_channels: int = 3) -> SmallCNN:
    return SmallCNN(8, [[32], [64, 64]], num_classes, in_channels)


@register_model()
def cnn_medium(num_classes: int = 10, in_channels: int = 3) -> SmallCNN:
    return SmallCNN(32, [[48, 48], [96, 96], [192]], num_classes, in_channels)


@register_model()
def mlp_small(num_classes: int = 10, in_channels: int = 3, pool_size: int = 8) -> MLP:
    return MLP([128, 64], pool_size, num_classes, in_channels)


@register_model()
def mlp_medium(num_classes: int = 10, in_channels: int = 3, pool_size: int = 14) -> MLP:
    return MLP([512, 256], pool_size, num_classes, in_channels)
