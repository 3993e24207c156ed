"""Data sets as in-memory LightningDataModules, chosen by name: `create_datamodule(**cfg.data, seed=...)`."""

from __future__ import annotations

import inspect

from .base import (
    DATASETS,
    DataFormatError,
    DataNotFoundError,
    TensorBatchLoader,
    TensorDataModule,
    random_crop_flip,
)
from .cifar import CIFAR10DataModule, CIFAR100DataModule, read_cifar_batch
from .digits import DigitsDataModule
from .idx import FashionMNISTDataModule, MNISTDataModule, read_idx, read_idx_pair
from .image_folder import ImageFolderDataModule
from .locate import SYSTEM_DIRS, FileDataModule, find_data_dir
from .synthetic import SyntheticDataModule
from .text import TextDataModule
from .text_synthetic import SyntheticTextDataModule

__all__ = [
    "DATASETS",
    "SYSTEM_DIRS",
    "CIFAR10DataModule",
    "CIFAR100DataModule",
    "DataFormatError",
    "DataNotFoundError",
    "DigitsDataModule",
    "FashionMNISTDataModule",
    "FileDataModule",
    "ImageFolderDataModule",
    "MNISTDataModule",
    "SyntheticDataModule",
    "SyntheticTextDataModule",
    "TextDataModule",
    "TensorBatchLoader",
    "TensorDataModule",
    "create_datamodule",
    "datamodule_options",
    "find_data_dir",
    "list_datasets",
    "random_crop_flip",
    "read_cifar_batch",
    "read_idx",
    "read_idx_pair",
]  # fmt: skip


def list_datasets() -> list[str]:
    return DATASETS.names()


def datamodule_options(name: str) -> list[str]:
    """Keyword arguments the named data set accepts (its own plus the shared ones)."""
    options: set[str] = set()
    for klass in DATASETS.get(name).__mro__:
        if klass is object or "__init__" not in vars(klass):
            continue
        for p in inspect.signature(klass.__init__).parameters.values():
            if p.name != "self" and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD):
                options.add(p.name)
        if klass is TensorDataModule:
            break
    return sorted(options)


def create_datamodule(name: str, **cfg) -> TensorDataModule:
    allowed = datamodule_options(name)  # raises for an unknown name, listing the choices
    unknown = sorted(set(cfg) - set(allowed))
    if unknown:
        raise ValueError(
            f"data set {name!r} does not take option(s) {', '.join(unknown)}; allowed: {', '.join(allowed)}"
        )
    return DATASETS.get(name)(**cfg)
