"""A seeded, learnable toy classification set: class prototypes of Gaussian blobs plus pixel noise."""

from __future__ import annotations

import torch

from .base import DATASETS, TensorDataModule, check_int


@DATASETS.register("synthetic")
class SyntheticDataModule(TensorDataModule):
    """Each class is a fixed image of 3 Gaussian blobs with random per-channel amplitudes; a sample is
    its class image plus N(0, noise^2) noise. `data_seed` fixes the data; `root`/`download` are ignored.
    """

    name = "synthetic"
    flip = False  # prototypes are not mirror-symmetric

    def __init__(
        self,
        *,
        num_classes: int = 10,
        image_size: int = 16,
        in_channels: int = 3,
        num_samples: int = 2000,
        num_test: int = 500,
        noise: float = 1.0,
        data_seed: int = 0,
        **common,
    ):
        super().__init__(**common)
        check_int("num_classes", num_classes, 2)
        check_int("image_size", image_size, 4)
        check_int("in_channels", in_channels, 1)
        check_int("num_samples", num_samples, 2)
        check_int("num_test", num_test, 1)
        check_int("data_seed", data_seed, 0)
        if not isinstance(noise, (int, float)) or isinstance(noise, bool) or noise < 0:
            raise ValueError(f"data.noise must be a number >= 0, got {noise!r}")
        self.num_classes, self.image_size, self.in_channels = num_classes, image_size, in_channels
        self.num_samples, self.num_test, self.noise, self.data_seed = (
            num_samples,
            num_test,
            float(noise),
            data_seed,
        )
        self.mean, self.std = (0.0,) * in_channels, (1.0,) * in_channels  # load_raw already standardizes
        self.crop_padding = max(1, image_size // 8)

    def load_raw(self):
        gen = torch.Generator().manual_seed(self.data_seed)
        k, c, s = self.num_classes, self.in_channels, self.image_size
        centers = torch.rand(k, 3, 2, generator=gen) * (s - 1)
        amplitudes = torch.randn(k, 3, c, generator=gen)
        grid = torch.arange(s, dtype=torch.float32)
        dist2 = (grid.view(s, 1) - centers[..., 0, None, None]) ** 2 + (
            grid - centers[..., 1, None, None]
        ) ** 2
        blobs = torch.exp(-dist2 / (2 * (s / 6) ** 2))  # (k, 3, s, s)
        prototypes = torch.einsum("kbc,kbhw->kchw", amplitudes, blobs)

        def sample(n: int):
            y = torch.randperm(n, generator=gen) % k  # balanced classes
            return prototypes[y] + self.noise * torch.randn(n, c, s, s, generator=gen), y

        (x_tr, y_tr), (x_te, y_te) = sample(self.num_samples), sample(self.num_test)
        mean, std = x_tr.mean(), x_tr.std()
        return (x_tr - mean) / std, y_tr, (x_te - mean) / std, y_te
