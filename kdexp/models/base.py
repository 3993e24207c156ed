"""The uniform feature interface every zoo model implements."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn


@dataclass
class FeatureOutput:
    """What a feature-based distiller can ask of any model.

    stages:    output of the stem and of each stage, post-activation, in forward order
    preact:    the same points before their last ReLU (== stages where the architecture has none)
    embedding: the pooled, flattened vector fed to the classifier
    """

    logits: Tensor
    stages: list[Tensor]
    preact: list[Tensor]
    embedding: Tensor


class ZooModel(nn.Module):
    """Base class: subclasses implement `forward_intermediates` (logits and the intermediate features, as timm's
    method of that name returns the final output and the intermediates); `forward` returns logits only."""

    num_classes: int
    in_channels: int

    def forward_intermediates(self, x: Tensor) -> FeatureOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_intermediates(x).logits

    @torch.no_grad()
    def feature_shapes(self, input_shape: tuple[int, ...]) -> FeatureOutput:
        """Shapes of every feature for one sample of `input_shape` (C, H, W); used to build adapters."""
        was_training = self.training
        self.eval()
        probe = torch.zeros(2, *input_shape, device=next(self.parameters()).device)
        out = self.forward_intermediates(probe)
        self.train(was_training)
        return out


def num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
