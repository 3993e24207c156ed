"""A weighted ensemble of models as one teacher (logits only): ensemble teachers, born-again and mutual-learning
ensembles. Not a zoo architecture: it is built from trained members."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from kdexp.config.variants import COMBINE
from kdexp.models.base import FeatureOutput, ZooModel


class EnsembleTeacher(ZooModel):
    """Weighted combination of member outputs (logits only). Weights are normalised to sum to 1."""

    def __init__(self, members: list[nn.Module], weights: list[float] | None = None, combine: str = "mean_logits"):
        super().__init__()
        if combine not in COMBINE:
            raise ValueError(f"combine={combine!r}: choose one of {', '.join(COMBINE)}")
        w = torch.tensor(weights if weights is not None else [1.0] * len(members), dtype=torch.float32)
        if len(w) != len(members) or (w < 0).any() or not w.sum() > 0:
            raise ValueError(f"ensemble weights {w.tolist()}: one number >= 0 per member, not all 0")
        self.members = nn.ModuleList(members)
        self.combine = combine
        self.num_classes = getattr(members[0], "num_classes", None)
        self.in_channels = getattr(members[0], "in_channels", None)
        # Buffers, so that the weights and the mode are part of the weights digest that keys cached outputs.
        self.register_buffer("member_weights", w / w.sum())
        self.register_buffer("combine_code", torch.tensor(COMBINE.index(combine)))

    def forward(self, x: Tensor) -> Tensor:
        logits = torch.stack([m(x) for m in self.members])  # (members, batch, classes)
        w = self.member_weights.to(logits.dtype)[:, None, None]
        if self.combine == "mean_logits":
            return (w * logits).sum(0)
        return torch.logsumexp(torch.log_softmax(logits, dim=-1) + w.log(), dim=0)  # log sum_i w_i p_i

    def forward_intermediates(self, x: Tensor) -> FeatureOutput:
        return FeatureOutput(self(x), [], [], None)
