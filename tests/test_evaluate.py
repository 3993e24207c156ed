"""Deployment costs: measured per architecture, not per set of weights."""

from __future__ import annotations

import torch

import kdexp.measure.metrics as evaluate
from kdexp.models import create_model


def test_costs_are_measured_once_per_architecture_and_input(monkeypatch):
    timed: list[int] = []
    real = evaluate.cpu_latency_ms
    monkeypatch.setattr(evaluate, "cpu_latency_ms", lambda m, shape, batch, repeats: timed.append(batch) or real(
        m, shape, batch, 1))
    monkeypatch.setattr(evaluate, "_COSTS", {})
    shape = (1, 8, 8)
    torch.manual_seed(0)
    first = evaluate.cost_metrics(create_model("cnn_tiny", in_channels=1), shape, 4, 2)
    torch.manual_seed(1)  # a sweep trial: same architecture, other weights
    again = evaluate.cost_metrics(create_model("cnn_tiny", in_channels=1), shape, 4, 2)
    assert again == first and timed == [1, 4]
    assert first["params"] == sum(p.numel() for p in create_model("cnn_tiny", in_channels=1).parameters())

    evaluate.cost_metrics(create_model("cnn_small", in_channels=1), shape, 4, 2)  # another architecture
    evaluate.cost_metrics(create_model("cnn_tiny", in_channels=1), (1, 16, 16), 4, 2)  # another input size
    evaluate.cost_metrics(create_model("cnn_tiny", in_channels=1, num_classes=5), shape, 4, 2)  # another head
    assert timed == [1, 4] * 4


def test_the_memo_returns_copies():
    costs = evaluate.cost_metrics(create_model("cnn_tiny", in_channels=1), (1, 8, 8), 2, 1)
    costs["params"] = -1
    assert evaluate.cost_metrics(create_model("cnn_tiny", in_channels=1), (1, 8, 8), 2, 1)["params"] > 0
