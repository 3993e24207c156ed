"""The IDX format of MNIST and Fashion-MNIST, and their data modules."""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np
import torch

from .base import DATASETS, DataFormatError
from .locate import Download, FileDataModule

IMAGES_MAGIC, LABELS_MAGIC = 2051, 2049  # type 0x08 (ubyte) with 3 resp. 1 dimensions
# IDX type code -> numpy dtype (multi-byte values are big-endian)
IDX_DTYPES = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_file_bytes(path: Path) -> bytes:
    """Whole file, gunzipped if it is gzip (by content, not by name)."""
    data = Path(path).read_bytes()
    if data[:2] != b"\x1f\x8b":
        return data
    try:
        return gzip.decompress(data)
    except (EOFError, OSError, zlib.error) as e:
        raise DataFormatError(f"{path}: damaged or truncated gzip data ({e})") from None


def read_idx(path: Path, magic: int | None = None) -> np.ndarray:
    data = read_file_bytes(path)
    if len(data) < 4:
        raise DataFormatError(f"{path}: {len(data)} bytes, too short for an IDX header")
    found = int.from_bytes(data[:4], "big")
    code, ndim = data[2], data[3]
    if (magic is not None and found != magic) or data[:2] != b"\0\0" or code not in IDX_DTYPES:
        want = f"{magic}" if magic is not None else "0x0000TTNN"
        raise DataFormatError(f"{path}: bad IDX magic number {found} (0x{found:08x}), expected {want}")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataFormatError(f"{path}: truncated IDX header, {len(data)} of {header} bytes")
    dims = tuple(int(d) for d in np.frombuffer(data, ">u4", ndim, 4))
    dtype = np.dtype(IDX_DTYPES[code])
    expected = int(np.prod(dims)) * dtype.itemsize
    actual = len(data) - header
    if actual != expected:
        shape = "x".join(map(str, dims))
        raise DataFormatError(
            f"{path}: header says {shape} values of {dtype.name} = {expected} data bytes, "
            f"but the file has {actual} ({'truncated' if actual < expected else 'trailing bytes'})"
        )
    return np.frombuffer(data, dtype, offset=header).reshape(dims)


def read_idx_pair(images_path: Path, labels_path: Path) -> tuple[np.ndarray, np.ndarray]:
    images = read_idx(images_path, IMAGES_MAGIC)
    labels = read_idx(labels_path, LABELS_MAGIC)
    if len(images) != len(labels):
        raise DataFormatError(
            f"{images_path} has {len(images)} images but {labels_path} has {len(labels)} labels"
        )
    return images, labels


def _mirrors(bases: tuple[str, ...], files: dict[str, str]) -> tuple[Download, ...]:
    return tuple(Download(name, md5, tuple(b + name for b in bases)) for name, md5 in files.items())


class IdxDataModule(FileDataModule):
    in_channels, image_size, num_classes = 1, 28, 10
    crop_padding = 2  # 28x28 digits/clothes: a 4-pixel shift would cut off too much
    flip = False
    expected = tuple(
        (f, f + ".gz")
        for f in (
            "train-images-idx3-ubyte",
            "train-labels-idx1-ubyte",
            "t10k-images-idx3-ubyte",
            "t10k-labels-idx1-ubyte",
        )
    )

    def load_raw(self):
        x_tr, y_tr = read_idx_pair(self.path(*self.expected[0]), self.path(*self.expected[1]))
        x_te, y_te = read_idx_pair(self.path(*self.expected[2]), self.path(*self.expected[3]))
        # np.frombuffer views are read-only; copy once so torch owns writable memory
        return (
            torch.from_numpy(x_tr.copy()).unsqueeze(1),
            torch.from_numpy(y_tr.astype(np.int64)),
            torch.from_numpy(x_te.copy()).unsqueeze(1),
            torch.from_numpy(y_te.astype(np.int64)),
        )


@DATASETS.register("mnist")
class MNISTDataModule(IdxDataModule):
    name = "mnist"
    mean, std = (0.1307,), (0.3081,)
    class_names = tuple(str(i) for i in range(10))
    subdirs = ("MNIST/raw",)  # torchvision's layout
    hint = "download the four *-ubyte.gz files from https://ossci-datasets.s3.amazonaws.com/mnist/"
    downloads = _mirrors(
        ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"),
        {
            "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
            "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
            "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
        },
    )


@DATASETS.register("fashion_mnist")
class FashionMNISTDataModule(IdxDataModule):
    name = "fashion_mnist"
    mean, std = (0.2860,), (0.3530,)
    flip = True  # clothes keep their class when mirrored
    class_names = (
        "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
        "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
    )  # fmt: skip
    subdirs = ("FashionMNIST/raw", "fashion-mnist")  # torchvision's layout, the Debian folder name
    hint = "apt-get install dataset-fashion-mnist (installs /usr/share/datasets/fashion-mnist)"
    downloads = _mirrors(
        ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        {
            "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
            "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
            "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
        },
    )
