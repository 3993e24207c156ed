"""CIFAR-10/100 in their official "python version" format (pickled dicts of uint8 arrays)."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch

from .base import DATASETS, DataFormatError
from .locate import Download, FileDataModule

_TORONTO = "https://www.cs.toronto.edu/~kriz/"


def load_pickle(path: Path) -> dict:
    # Unpickling can execute code: we only open files the user pointed us at (or that passed the official
    # MD5), and pickles are the official distribution format of CIFAR.
    try:
        with open(path, "rb") as f:
            obj = pickle.load(f, encoding="bytes")
    except (
        pickle.UnpicklingError,
        EOFError,
        ValueError,
        TypeError,
        AttributeError,
        ImportError,
        IndexError,
    ) as e:
        raise DataFormatError(f"{path}: not a readable CIFAR pickle ({type(e).__name__}: {e})") from None
    if not isinstance(obj, dict):
        raise DataFormatError(f"{path}: expected a pickled dict, got {type(obj).__name__}")
    return obj


def read_cifar_batch(path: Path, label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 N x 3 x 32 x 32, labels int64 N) from one CIFAR batch file."""
    batch = load_pickle(path)
    missing = [k.decode() for k in (b"data", label_key) if k not in batch]
    if missing:
        raise DataFormatError(f"{path}: missing key(s) {missing}; has {sorted(k.decode() for k in batch)}")
    data, labels = batch[b"data"], np.asarray(batch[label_key])
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        shape = getattr(data, "shape", None)
        raise DataFormatError(f"{path}: b'data' must be a uint8 array of shape (N, 3072), got {shape}")
    if labels.shape != (len(data),):
        raise DataFormatError(f"{path}: {len(data)} images but labels of shape {labels.shape}")
    # each row: 1024 red, then green, then blue values, each a row-major 32x32 plane
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


class CifarDataModule(FileDataModule):
    in_channels, image_size = 3, 32
    train_files: tuple[str, ...]
    test_file: str
    label_key: bytes

    def load_raw(self):
        parts = [read_cifar_batch(self.path(f), self.label_key) for f in self.train_files]
        x_te, y_te = read_cifar_batch(self.path(self.test_file), self.label_key)
        x_tr, y_tr = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
        return torch.from_numpy(x_tr), torch.from_numpy(y_tr), torch.from_numpy(x_te), torch.from_numpy(y_te)


@DATASETS.register("cifar10")
class CIFAR10DataModule(CifarDataModule):
    name = "cifar10"
    num_classes = 10
    mean, std = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
    class_names = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
    train_files = tuple(f"data_batch_{i}" for i in range(1, 6))
    test_file = "test_batch"
    label_key = b"labels"
    expected = tuple((f,) for f in (*train_files, test_file))
    subdirs = ("cifar-10-batches-py",)
    hint = f"download and unpack {_TORONTO}cifar-10-python.tar.gz"
    downloads = (Download("cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a",
                          (_TORONTO + "cifar-10-python.tar.gz",), extract=True),)  # fmt: skip


@DATASETS.register("cifar100")
class CIFAR100DataModule(CifarDataModule):
    name = "cifar100"
    num_classes = 100
    mean, std = (0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)
    train_files = ("train",)
    test_file = "test"
    label_key = b"fine_labels"
    expected = (("train",), ("test",))
    subdirs = ("cifar-100-python",)
    hint = f"download and unpack {_TORONTO}cifar-100-python.tar.gz"
    downloads = (Download("cifar-100-python.tar.gz", "eb9058c3a382ffc7106e4002c42a8d85",
                          (_TORONTO + "cifar-100-python.tar.gz",), extract=True),)  # fmt: skip

    def setup(self, stage: str | None = None) -> None:
        if self.class_names is None:  # here, not in load_raw: memoized raw data skips load_raw
            meta = self.data_dir() / "meta"  # optional: class names only
            names = load_pickle(meta).get(b"fine_label_names") if meta.is_file() else None
            if names is not None and len(names) == self.num_classes:
                self.class_names = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names)
        super().setup(stage)
