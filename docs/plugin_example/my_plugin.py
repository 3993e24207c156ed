"""A kdexp plug-in: a model, a distillation method and a data set of one's own, registered by importing this
file (`kdexp-train imports=[my_plugin] ...` from this folder). The README's plug-in section walks through it;
tests/e2e/test_plugins.py runs it."""

import torch
import torch.nn.functional as F
from torch import nn

from kdexp.data import DATASETS
from kdexp.data.synthetic import SyntheticDataModule
from kdexp.distill import Distiller, register_method
from kdexp.models import register_model
from kdexp.models.base import FeatureOutput, ZooModel


class TwoLayerNet(ZooModel):
    """Any nn.Module works as a zoo model once it returns FeatureOutput from forward_intermediates."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3, width: int = 32):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                                  nn.Flatten())
        self.head = nn.Linear(width, num_classes)

    def forward_intermediates(self, x: torch.Tensor) -> FeatureOutput:
        embedding = self.body(x)
        return FeatureOutput(self.head(embedding), [], [], embedding)


@register_model("my_net")
def my_net(num_classes: int = 10, in_channels: int = 3, width: int = 32) -> TwoLayerNet:
    return TwoLayerNet(num_classes, in_channels, width)


@register_method("my_l2")
class LogitL2(Distiller):
    """Match the teacher's logits in mean squared error: one named loss term, `my_l2`."""

    terms = ("my_l2",)
    needs = frozenset({"logits"})

    def __init__(self, scale: float = 1.0):
        super().__init__()
        self.scale = scale

    def forward(self, student, teacher, target, index, epoch):
        return {"my_l2": self.scale * F.mse_loss(student.logits, teacher.logits.detach())}


@DATASETS.register("my_blobs")
class MyBlobs(SyntheticDataModule):
    """A data module of one's own: here, kdexp's synthetic blobs with 4 classes (any TensorDataModule)."""

    name = "my_blobs"

    def __init__(self, **options):
        super().__init__(**{"num_classes": 4, **options})
