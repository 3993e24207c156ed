"""scikit-learn's 8x8 handwritten digits: tiny, bundled with the wheel, no download."""

from __future__ import annotations

import torch

from .base import DATASETS, TensorDataModule

TEST_FRACTION, TEST_SPLIT_SEED = 0.2, 0  # the data set has no official test split: fix one for good


@DATASETS.register("digits")
class DigitsDataModule(TensorDataModule):
    """`root` and `download` are accepted (the shared config passes them) and ignored."""

    name = "digits"
    num_classes, in_channels, image_size = 10, 1, 8
    mean, std = (0.3053,), (0.3760,)  # of pixel/16 over all 1797 images
    class_names = tuple(str(i) for i in range(10))
    flip = False
    crop_padding = 1

    def load_raw(self):
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        digits = load_digits()
        x = torch.from_numpy(digits.images).float().unsqueeze(1) / 16  # pixel values are 0..16
        y = torch.from_numpy(digits.target).long()
        train, test = train_test_split(
            torch.arange(len(y)).numpy(),
            test_size=TEST_FRACTION,
            stratify=y.numpy(),
            random_state=TEST_SPLIT_SEED,
        )
        return x[train], y[train], x[test], y[test]
