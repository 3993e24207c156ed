"""Deployment costs: parameters, FLOPs and size counted once per architecture; latency never kept."""

from __future__ import annotations

import torch

import kdexp.measure.metrics as costs
from kdexp.models import create_model


def test_costs_are_counted_once_per_architecture_and_input(monkeypatch):
    counted: list[tuple] = []
    real = costs.count_flops
    monkeypatch.setattr(costs, "count_flops", lambda m, shape: counted.append(shape) or real(m, shape))
    monkeypatch.setattr(costs, "_COSTS", {})
    shape = (1, 8, 8)
    torch.manual_seed(0)
    first = costs.cost_metrics(create_model("cnn_tiny", in_channels=1), shape)
    torch.manual_seed(1)  # a sweep trial: same architecture, other weights
    again = costs.cost_metrics(create_model("cnn_tiny", in_channels=1), shape)
    assert again == first and counted == [shape]
    assert first["params"] == sum(p.numel() for p in create_model("cnn_tiny", in_channels=1).parameters())
    assert set(first) == {"params", "flops", "size_bytes"}  # no latency: kdexp.measure.latency times it afresh

    costs.cost_metrics(create_model("cnn_small", in_channels=1), shape)  # another architecture
    costs.cost_metrics(create_model("cnn_tiny", in_channels=1), (1, 16, 16))  # another input size
    costs.cost_metrics(create_model("cnn_tiny", in_channels=1, num_classes=5), shape)  # another head
    assert len(counted) == 4


def test_the_memo_returns_copies():
    counts = costs.cost_metrics(create_model("cnn_tiny", in_channels=1), (1, 8, 8))
    counts["params"] = -1
    assert costs.cost_metrics(create_model("cnn_tiny", in_channels=1), (1, 8, 8))["params"] > 0


def test_latency_ratios_are_not_taken_from_separate_medians():
    student = {"params": 10.0, "latency_b1_ms": 1.0, "latency_b1_iqr_ms": 0.1, "latency_noisy": 0.0}
    teacher = {"params": 100.0, "latency_b1_ms": 4.0, "latency_b1_iqr_ms": 0.2, "latency_noisy": 0.0}
    assert costs.ratios(student, teacher) == {"params_ratio": 0.1}  # latency ratios come paired, per block
