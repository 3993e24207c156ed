"""The uniform feature interface every zoo model implements."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn


@dataclass
class FeatureOutput:
    """What a feature-based distiller can ask of any model.

    stages:    output of the stem and of each stage, post-activation, in forward order
    preact:    the same points before their last ReLU (== stages where the architecture has none)
    embedding: the pooled, flattened vector fed to the classifier
    Transformers (kdexp.models.text) also give, with stages = every hidden state (B, L, H), embeddings first:
    attentions: each layer's attention probabilities (B, heads, L, L)
    values:     each layer's value projection (B, L, H), for MiniLM's value relation
    queries, keys: each layer's query and key projections (B, L, H), for TinyBERT's pre-softmax scores
    mask:       the attention mask (B, L), 1 on real tokens
    """

    logits: Tensor
    stages: list[Tensor]
    preact: list[Tensor]
    embedding: Tensor
    attentions: list[Tensor] = field(default_factory=list)
    values: list[Tensor] = field(default_factory=list)
    queries: list[Tensor] = field(default_factory=list)
    keys: list[Tensor] = field(default_factory=list)
    mask: Tensor | None = None


class ZooModel(nn.Module):
    """Base class: subclasses implement `forward_intermediates` (logits and the intermediate features, as timm's
    method of that name returns the final output and the intermediates); `forward` returns logits only."""

    num_classes: int
    in_channels: int
    input_dtype: torch.dtype = torch.float32  # int64 for models of token ids

    def forward_intermediates(self, x: Tensor) -> FeatureOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_intermediates(x).logits

    @torch.no_grad()
    def feature_shapes(self, input_shape: tuple[int, ...]) -> FeatureOutput:
        """Shapes of every feature for one sample of `input_shape` (C, H, W); used to build adapters."""
        was_training = self.training
        self.eval()
        probe = example_input(self, input_shape, 2, device=next(self.parameters()).device)
        out = self.forward_intermediates(probe)
        self.train(was_training)
        return out


def num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def own_rows(model: nn.Module, x: Tensor) -> Tensor:
    """The part of a data batch `model` reads alone (a text model of two tokenizations: its own rows; else x),
    contiguous: an exported program's input guards expect a plain (B, 3, L) layout."""
    return model.own_rows(x).contiguous() if hasattr(model, "own_rows") else x


def example_input(model: nn.Module, input_shape: tuple[int, ...], batch: int, device=None,
                  random: bool = False) -> Tensor:
    """A batch of `input_shape` that `model` accepts: zeros (or N(0, 1) with `random`) for image models; for models
    of token ids (input_dtype int64, rows ids/mask/types) token 0 at every position, all unmasked (full length).

    Args:
        model: the model the batch is for; its `input_dtype` (default float32) decides the kind of input.
        input_shape: one sample's shape.
        batch: the batch size.
        device: where to make it (default CPU).
        random: normal noise instead of zeros, for image models (latency runs).
    Returns:
        the batch tensor.
    """
    dtype = getattr(model, "input_dtype", torch.float32)
    if hasattr(model, "own_shape"):  # a text model alone takes its own tokenization's rows
        input_shape = model.own_shape(tuple(input_shape))
    if dtype.is_floating_point:
        make = torch.randn if random else torch.zeros
        return make(batch, *input_shape, device=device)
    x = torch.zeros(batch, *input_shape, dtype=dtype, device=device)
    x[:, 1] = 1  # attention mask
    return x
