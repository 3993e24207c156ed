"""A user's own images: one sub-folder per class (PNG/JPEG, read with Pillow), resized to one square size.

Layouts (`data.root`):
  root/<class>/*.png|jpg|jpeg                      test split: a fixed stratified `test_fraction` of the images
  root/train/<class>/..., root/test/<class>/...    the given test split is used as it is
Validation is carved from the train part by the shared split logic (`val_fraction`, `split_seed`).
Mean and std are computed per channel from the train part, so no statistics need configuring.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from kdexp.config.rules import check_number

from .base import DATASETS, DataFormatError, DataNotFoundError, TensorDataModule, check_int

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
MODES = {1: "L", 3: "RGB"}  # in_channels -> Pillow mode every image is converted to
TEST_SPLIT_SEED = 0  # fixed: the test images of a folder never change with the run's seeds


def class_folders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                  and not p.name.startswith("."))


def scan(folder: Path, classes: list[str] | None = None) -> tuple[list[str], list[tuple[Path, int]]]:
    """Class names (sorted sub-folder names) and (file, label) pairs; clear errors for what is missing."""
    found = [p.name for p in class_folders(folder)]
    if classes is None:
        classes = found
        if len(classes) < 2:
            raise DataNotFoundError(
                f"data.root={str(folder)!r}: found {len(classes)} class folder(s) {classes}; an image-folder"
                " data set needs one sub-folder per class, at least 2")
    elif found != classes:
        raise DataFormatError(f"{folder}: class folders {found} differ from the train split's {classes}")
    items = []
    for label, name in enumerate(classes):
        files = image_files(folder / name)
        if not files:
            raise DataNotFoundError(
                f"class folder {str(folder / name)!r} has no images ({', '.join(IMAGE_SUFFIXES)})")
        items += [(f, label) for f in files]
    return classes, items


def read_images(items: list[tuple[Path, int]], size: int, channels: int) -> tuple[Tensor, Tensor]:
    """uint8 NCHW images resized to size x size, and int64 labels."""
    from PIL import Image, UnidentifiedImageError

    out = np.empty((len(items), size, size, channels), np.uint8)
    for i, (path, _) in enumerate(items):
        try:
            with Image.open(path) as image:
                image = image.convert(MODES[channels]).resize((size, size), Image.Resampling.BILINEAR)
                out[i] = np.asarray(image).reshape(size, size, channels)
        except (UnidentifiedImageError, OSError, ValueError) as e:
            raise DataFormatError(f"cannot read image {path}: {e}") from None
    labels = torch.tensor([label for _, label in items], dtype=torch.long)
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous(), labels


def stratified_split(y: Tensor, fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """(train, test) indices with `fraction` of every class (at least one) in test, when a class has >= 2."""
    gen = torch.Generator().manual_seed(seed)
    train, test = [], []
    for label in y.unique():
        members = (y == label).nonzero().flatten()
        members = members[torch.randperm(len(members), generator=gen)]
        n_test = min(max(1, round(fraction * len(members))), len(members) - 1)
        test.append(members[:n_test])
        train.append(members[n_test:])
    return torch.cat(train).sort().values, torch.cat(test).sort().values


@DATASETS.register("image_folder")
class ImageFolderDataModule(TensorDataModule):
    """Images from `root` (required): see the module docstring for the layouts. `download` is ignored."""

    name = "image_folder"
    flip = True  # natural images usually keep their class when mirrored; set data.flip=false if not

    def __init__(self, *, image_size: int = 32, in_channels: int = 3, test_fraction: float = 0.2,
                 flip: bool = True, **common):
        super().__init__(**common)
        check_int("image_size", image_size, 4)
        if in_channels not in MODES:
            raise ValueError(f"data.in_channels must be 1 (grey) or 3 (RGB), got {in_channels!r}")
        check_number("data.test_fraction", test_fraction, gt=0, lt=1)
        if not isinstance(flip, bool):
            raise ValueError(f"data.flip must be true or false, got {flip!r}")
        if self.root is None:
            raise ValueError("data.root is required for data=image_folder: a folder with one sub-folder per class")
        folder = Path(self.root).expanduser()
        if not folder.is_dir():
            raise DataNotFoundError(f"data.root={str(self.root)!r} is not a folder")
        self.folder = folder.resolve()
        self.image_size, self.in_channels, self.test_fraction, self.flip = image_size, in_channels, test_fraction, flip
        self.crop_padding = max(1, image_size // 8)
        split = (self.folder / "train").is_dir() and (self.folder / "test").is_dir()
        self.split_folders = (self.folder / "train", self.folder / "test") if split else None
        # class names now (cheap: folder names), so models can be built before any image is decoded
        names = [p.name for p in class_folders(self.split_folders[0] if split else self.folder)]
        self.class_names = tuple(names)
        self.num_classes = len(names)
        self.mean, self.std = (0.5,) * in_channels, (0.25,) * in_channels  # replaced by the data's own

    def _items(self) -> tuple[list[tuple[Path, int]], list[tuple[Path, int]] | None]:
        if self.split_folders is None:
            return scan(self.folder)[1], None
        classes, train = scan(self.split_folders[0])
        return train, scan(self.split_folders[1], classes)[1]

    def raw_source(self) -> tuple:
        train, test = self._items()
        files = [f for f, _ in train + (test or [])]
        stats = tuple((str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files)
        return (type(self).__qualname__, self.image_size, self.in_channels, self.test_fraction, stats)

    def load_raw(self):
        train, test = self._items()
        if test is not None:
            return (*read_images(train, self.image_size, self.in_channels),
                    *read_images(test, self.image_size, self.in_channels))
        x, y = read_images(train, self.image_size, self.in_channels)
        if len(y) < 3:
            raise DataNotFoundError(f"data.root={str(self.root)!r}: {len(y)} images; need at least 3 "
                                    "(train, validation and test)")
        tr, te = stratified_split(y, self.test_fraction, TEST_SPLIT_SEED)
        return x[tr], y[tr], x[te], y[te]

    def _build_splits(self, x_tr: Tensor, y_tr: Tensor, x_te: Tensor, y_te: Tensor) -> dict:
        pixels = x_tr.float().div_(255).transpose(0, 1).reshape(self.in_channels, -1)
        self.mean = tuple(round(v, 4) for v in pixels.mean(1).tolist())
        self.std = tuple(round(max(v, 1e-3), 4) for v in pixels.std(1).tolist())
        return super()._build_splits(x_tr, y_tr, x_te, y_te)
