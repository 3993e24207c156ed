"""A real DistillModule fit in about a second: cnn_tiny trained alone on 64 random 8x8 images, 4 classes."""

from __future__ import annotations

import torch


def tiny_module_and_loaders(epochs: int, lr: float = 1e-3):
    """(module, train loader, val loader, per-epoch metrics the module reports through its metric sink)."""
    import lightning as L
    from torch.utils.data import DataLoader, TensorDataset

    from kdexp.models import create_model
    from kdexp.modules.distill import DistillModule

    L.seed_everything(0, verbose=False)
    x, y = torch.randn(64, 1, 8, 8), torch.randint(0, 4, (64,))
    data = TensorDataset(x, y, torch.arange(64))
    logged: list[dict] = []
    module = DistillModule(create_model("cnn_tiny", num_classes=4, in_channels=1), max_epochs=epochs,
                           recipe={"optimizer": "adam", "lr": lr},
                           metric_sink=lambda metrics, epoch: logged.append(dict(metrics)))
    return module, DataLoader(data, batch_size=16, shuffle=True), DataLoader(data, batch_size=32), logged
