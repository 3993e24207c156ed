"""kdexp.data: file readers, locating, splits, loaders, augmentation, Lightning integration. No network."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import pickle
import struct
import tarfile
from collections import defaultdict
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kdexp.data import (
    DataFormatError,
    DataNotFoundError,
    MNISTDataModule,
    create_datamodule,
    list_datasets,
    locate,
    random_crop_flip,
    read_cifar_batch,
    read_idx,
    read_idx_pair,
)
from kdexp.data.loader import epoch_generator

FASHION = Path("/usr/share/datasets/fashion-mnist")
IDX_NAMES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


@pytest.fixture(autouse=True)
def isolated_env(monkeypatch, tmp_path):
    """No downloads, no user cache, no $KDEXP_DATA, no system folders unless a test adds them."""
    monkeypatch.setenv("KDEXP_OFFLINE", "1")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    monkeypatch.delenv("KDEXP_DATA", raising=False)
    monkeypatch.setattr(locate, "SYSTEM_DIRS", {})


# --- writers of the real formats -------------------------------------------------------------------
def idx_bytes(array: np.ndarray) -> bytes:
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_idx(path: Path, array: np.ndarray, gz: bool = False) -> Path:
    data = idx_bytes(array)
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def make_mnist_dir(folder: Path, n_train=30, n_test=12, gz=True, seed=0):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    for name, array in arrays.items():
        write_idx(folder / (name + (".gz" if gz else "")), array, gz=gz)
    return arrays


def cifar_batch(n: int, rng, label_key: bytes, num_classes: int) -> dict:
    batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
             label_key: [int(v) for v in rng.integers(0, num_classes, n)],
             b"batch_label": b"testing batch", b"filenames": [b"x.png"] * n}  # fmt: skip
    if label_key == b"fine_labels":
        batch[b"coarse_labels"] = [v // 5 for v in batch[label_key]]
    return batch


def make_cifar10_dir(parent: Path, seed=0) -> tuple[Path, dict]:
    folder, rng = parent / "cifar-10-batches-py", np.random.default_rng(seed)
    folder.mkdir(parents=True)
    batches = {f"data_batch_{i}": cifar_batch(3, rng, b"labels", 10) for i in range(1, 6)}
    batches["test_batch"] = cifar_batch(4, rng, b"labels", 10)
    for name, batch in batches.items():
        (folder / name).write_bytes(pickle.dumps(batch))
    return folder, batches


# --- IDX -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("gz", [False, True])
def test_idx_roundtrip(tmp_path, gz):
    rng = np.random.default_rng(1)
    images, labels = rng.integers(0, 256, (7, 5, 3), dtype=np.uint8), rng.integers(0, 10, 7, dtype=np.uint8)
    x, y = read_idx_pair(write_idx(tmp_path / "i", images, gz), write_idx(tmp_path / "l", labels, gz))
    assert x.shape == (7, 5, 3) and x.dtype == np.uint8 and np.array_equal(x, images)
    assert np.array_equal(y, labels)


def test_idx_errors(tmp_path):
    images = np.zeros((4, 6, 6), np.uint8)
    full = idx_bytes(images)
    (tmp_path / "short").write_bytes(full[:-10])
    with pytest.raises(
        DataFormatError,
        match=r"short: header says 4x6x6 values of uint8 = 144 data bytes, "
        r"but the file has 134 \(truncated\)",
    ):
        read_idx(tmp_path / "short", 2051)
    (tmp_path / "short.gz").write_bytes(gzip.compress(full)[:-12])
    with pytest.raises(DataFormatError, match="short.gz: damaged or truncated gzip"):
        read_idx(tmp_path / "short.gz")
    write_idx(tmp_path / "labels", np.zeros(4, np.uint8))
    with pytest.raises(DataFormatError, match=r"labels: bad IDX magic number 2049 .*expected 2051"):
        read_idx(tmp_path / "labels", 2051)
    write_idx(tmp_path / "five", np.zeros(5, np.uint8))
    write_idx(tmp_path / "imgs", images)
    with pytest.raises(DataFormatError, match="has 4 images but .*five has 5 labels"):
        read_idx_pair(tmp_path / "imgs", tmp_path / "five")


def test_mnist_datamodule_from_files(tmp_path):
    arrays = make_mnist_dir(tmp_path / "m", gz=False)
    dm = create_datamodule("mnist", root=str(tmp_path / "m"), val_fraction=0.2)
    x, y = dm.split_tensors("test")
    raw = torch.from_numpy(arrays["t10k-images-idx3-ubyte"]).float().unsqueeze(1) / 255
    assert torch.allclose(x * 0.3081 + 0.1307, raw, atol=1e-5)
    assert y.tolist() == arrays["t10k-labels-idx1-ubyte"].tolist()
    assert (dm.num_train, len(dm.split_tensors("val")[1])) == (24, 6)
    assert dm.input_shape == (1, 28, 28) and dm.num_classes == 10 and dm.in_channels == 1
    before = dm.fingerprint()
    write_idx(tmp_path / "m" / "t10k-labels-idx1-ubyte", np.ones(12, np.uint8))
    assert (
        create_datamodule("mnist", root=str(tmp_path / "m")).fingerprint()["content_blake2b"]
        != before["content_blake2b"]
    )


def test_real_fashion_mnist(monkeypatch):
    if not FASHION.is_dir():
        pytest.skip(f"{FASHION} absent (apt-get install dataset-fashion-mnist)")
    assert read_idx(FASHION / "train-labels-idx1-ubyte.gz", 2049).shape == (60000,)
    assert read_idx(FASHION / "t10k-labels-idx1-ubyte.gz", 2049).shape == (10000,)
    monkeypatch.setitem(locate.SYSTEM_DIRS, "fashion_mnist", [FASHION])  # the real default list
    dm = create_datamodule("fashion_mnist", limit=256)
    assert dm.data_dir() == FASHION
    x, y = dm.split_tensors("train")
    assert x.shape == (256, 1, 28, 28) and dm.num_train == 256 and len(dm.split_tensors("test")[1]) == 256
    assert set(y.tolist()) <= set(range(10)) and dm.class_names[9] == "Ankle boot"


# --- CIFAR -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("point_at", ["folder", "parent"])
def test_cifar10_pickles(tmp_path, point_at):
    folder, batches = make_cifar10_dir(tmp_path)
    dm = create_datamodule(
        "cifar10", root=str(folder if point_at == "folder" else tmp_path), val_fraction=0.5
    )
    assert dm.data_dir() == folder
    x, y = dm.split_tensors("test")
    want = torch.from_numpy(batches["test_batch"][b"data"]).view(4, 3, 32, 32).float() / 255
    mean, std = torch.tensor(dm.mean).view(1, 3, 1, 1), torch.tensor(dm.std).view(1, 3, 1, 1)
    assert torch.allclose(x * std + mean, want, atol=1e-5)
    assert y.tolist() == batches["test_batch"][b"labels"]
    assert dm.num_train + len(dm.split_tensors("val")[1]) == 15
    # CIFAR rows are R plane, G plane, B plane: pixel (c=1, h=0, w=2) is column 1024 + 2
    raw, _ = read_cifar_batch(folder / "data_batch_1", b"labels")
    assert raw[0, 1, 0, 2] == batches["data_batch_1"][b"data"][0, 1024 + 2]


def test_cifar100_pickles_and_class_names(tmp_path):
    folder, rng = tmp_path / "cifar-100-python", np.random.default_rng(0)
    folder.mkdir()
    train, test = cifar_batch(6, rng, b"fine_labels", 100), cifar_batch(2, rng, b"fine_labels", 100)
    (folder / "train").write_bytes(pickle.dumps(train))
    (folder / "test").write_bytes(pickle.dumps(test))
    names = [f"class{i}".encode() for i in range(100)]
    (folder / "meta").write_bytes(pickle.dumps({b"fine_label_names": names, b"coarse_label_names": []}))
    dm = create_datamodule("cifar100", root=str(tmp_path))
    assert dm.split_tensors("test")[1].tolist() == test[b"fine_labels"]
    assert dm.num_classes == 100 and dm.class_names[7] == "class7" and dm.input_shape == (3, 32, 32)


def test_cifar_errors(tmp_path):
    good = pickle.dumps(cifar_batch(2, np.random.default_rng(0), b"labels", 10))
    (tmp_path / "cut").write_bytes(good[: len(good) // 2])
    with pytest.raises(DataFormatError, match="cut: not a readable CIFAR pickle"):
        read_cifar_batch(tmp_path / "cut", b"labels")
    (tmp_path / "shape").write_bytes(pickle.dumps({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}))
    with pytest.raises(
        DataFormatError, match=r"shape: b'data' must be a uint8 array of shape \(N, 3072\), got \(2, 100\)"
    ):
        read_cifar_batch(tmp_path / "shape", b"labels")
    with pytest.raises(DataFormatError, match=r"missing key\(s\) \['fine_labels'\]"):
        read_cifar_batch(tmp_path / "shape", b"fine_labels")


# --- locating --------------------------------------------------------------------------------------
def test_location_order(tmp_path, monkeypatch):
    for d in ("root", "env", "system"):
        make_mnist_dir(tmp_path / d)
    monkeypatch.setitem(locate.SYSTEM_DIRS, "mnist", [tmp_path / "system"])
    monkeypatch.setenv("KDEXP_DATA", str(tmp_path / "env"))
    assert MNISTDataModule(root=str(tmp_path / "root")).data_dir() == tmp_path / "root"
    assert MNISTDataModule().data_dir() == tmp_path / "env"
    monkeypatch.setenv("KDEXP_DATA", str(tmp_path / "empty"))
    assert MNISTDataModule().data_dir() == tmp_path / "system"
    make_mnist_dir(tmp_path / "empty" / "mnist")  # $KDEXP_DATA/<name> counts too
    assert MNISTDataModule().data_dir() == tmp_path / "empty" / "mnist"


def test_not_found_lists_every_place(tmp_path, monkeypatch):
    monkeypatch.setitem(locate.SYSTEM_DIRS, "mnist", [tmp_path / "sys"])
    monkeypatch.setenv("KDEXP_DATA", str(tmp_path / "env"))
    (tmp_path / "env").mkdir()
    with pytest.raises(DataNotFoundError) as err:
        MNISTDataModule().setup()
    msg = str(err.value)
    for place in (
        tmp_path / "env",
        tmp_path / "env" / "mnist",
        tmp_path / "sys",
        tmp_path / "xdg-cache" / "kdexp" / "mnist",
    ):
        assert f"  {place}  [" in msg
    assert "missing train-images-idx3-ubyte or train-images-idx3-ubyte.gz" in msg  # env exists, files don't
    assert "no such folder" in msg and "KDEXP_OFFLINE=1" in msg and "set data.root" in msg
    with pytest.raises(
        DataNotFoundError,
        match=r"(?s)Expected files: data_batch_1, .*test_batch\nLooked in:\n.*\[data.root\]",
    ):
        create_datamodule("cifar10", root=str(tmp_path)).setup()
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        create_datamodule("fashion_mnist").setup()


def test_download_checks_md5_and_leaves_no_partial_file(tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(b"payload" * 100)
    md5 = hashlib.md5(src.read_bytes()).hexdigest()
    dest = tmp_path / "out" / "file.bin"
    dest.parent.mkdir()
    with pytest.raises(OSError, match="MD5 .* does not match the expected 0+"):
        locate.download_file(locate.Download("file.bin", "0" * 32, (src.as_uri(),)), dest)
    with pytest.raises(OSError, match="nope"):
        locate.download_file(locate.Download("file.bin", md5, ((tmp_path / "nope").as_uri(),)), dest)
    assert list(dest.parent.iterdir()) == []
    locate.download_file(locate.Download("file.bin", md5, ((tmp_path / "nope").as_uri(), src.as_uri())), dest)
    assert dest.read_bytes() == src.read_bytes() and list(dest.parent.iterdir()) == [dest]


def test_download_and_unpack_cifar_tarball(tmp_path, monkeypatch):
    make_cifar10_dir(tmp_path / "pack")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(tmp_path / "pack" / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    archive = tmp_path / "cifar-10-python.tar.gz"
    archive.write_bytes(buf.getvalue())
    cls = type(create_datamodule("cifar10"))
    fake = locate.Download(
        archive.name, hashlib.md5(buf.getvalue()).hexdigest(), (archive.as_uri(),), extract=True
    )
    monkeypatch.setattr(cls, "downloads", (fake,))
    with pytest.raises(DataNotFoundError, match="download: disabled"):
        create_datamodule("cifar10").setup()
    dm = create_datamodule("cifar10", download=True)
    target = tmp_path / "xdg-cache" / "kdexp" / "cifar10"
    assert dm.data_dir() == target / "cifar-10-batches-py" and len(dm.split_tensors("test")[1]) == 4
    assert sorted(p.name for p in target.iterdir()) == ["cifar-10-batches-py"]  # tarball removed


# --- configuration errors --------------------------------------------------------------------------
def test_config_errors():
    assert list_datasets() == ["cifar10", "cifar100", "digits", "fashion_mnist", "image_folder", "mnist", "synthetic",
                               "text", "text_synthetic"]
    with pytest.raises(
        ValueError, match="unknown data set 'imagenet'; choose one of: cifar10, cifar100, digits"
    ):
        create_datamodule("imagenet")
    with pytest.raises(
        ValueError, match=r"data set 'digits' does not take option\(s\) colour; allowed: augment, "
    ):
        create_datamodule("digits", colour=True)
    for bad in (0, 1, 1.5, -0.1, "0.1"):
        with pytest.raises(ValueError, match=rf"data.val_fraction must be a number in \(0, 1\).*got {bad!r}"):
            create_datamodule("digits", val_fraction=bad)
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match=rf"data.limit={bad!r} is invalid: must be an integer >= 1"):
            create_datamodule("digits", limit=bad)
    with pytest.raises(ValueError, match="data.batch_size=0 is invalid: must be an integer >= 1"):
        create_datamodule("digits", batch_size=0)
    with pytest.raises(ValueError, match="split must be one of train, val, test"):
        create_datamodule("synthetic", num_samples=20).split_tensors("valid")


def test_hydra_style_config_is_accepted():
    cfg = dict(name="digits", root=None, limit=None, val_fraction=0.1, split_seed=0, batch_size=128,
               eval_batch_size=1024, augment=False)  # fmt: skip
    dm = create_datamodule(**cfg, seed=3)
    assert dm.seed == 3 and dm.input_shape == (1, 8, 8) and dm.num_train == 1293  # 1437 train - 144 val


# --- splits, limit, normalization ------------------------------------------------------------------
def rows(x: torch.Tensor) -> set[bytes]:
    return {r.numpy().tobytes() for r in x.flatten(1)}


def test_split_and_limit_determinism():
    make = lambda **kw: create_datamodule("synthetic", num_samples=300, num_test=100, **kw)
    a, b, other_run = make(), make(), make(seed=7)
    for split in ("train", "val", "test"):
        assert torch.equal(a.split_tensors(split)[0], b.split_tensors(split)[0])
        assert torch.equal(
            a.split_tensors(split)[0], other_run.split_tensors(split)[0]
        )  # run seed: no effect
    train, val = rows(a.split_tensors("train")[0]), rows(a.split_tensors("val")[0])
    assert (len(train), len(val)) == (270, 30) and not train & val
    assert rows(make(split_seed=1).split_tensors("val")[0]) != val
    small, smaller = make(limit=40), make(limit=20)
    for split in ("train", "val", "test"):
        assert len(small.split_tensors(split)[1]) == (30 if split == "val" else 40)
        assert rows(smaller.split_tensors(split)[0]) <= rows(small.split_tensors(split)[0])  # nested subsets
    assert rows(small.split_tensors("train")[0]) <= train and small.num_train == 40


def test_normalization_stats():
    dm = create_datamodule("digits")
    x, _ = dm.split_tensors("train")
    assert abs(x.mean().item()) < 0.02 and abs(x.std().item() - 1) < 0.02
    pixels = x * 0.3760 + 0.3053
    assert pixels.min() > -1e-5 and pixels.max() < 1 + 1e-5 and x.dtype == torch.float32
    assert dm.split_tensors("test")[0].shape == (360, 1, 8, 8)


# --- loaders ---------------------------------------------------------------------------------------
def test_loader_yields_indexed_batches():
    dm = create_datamodule("synthetic", num_samples=110, batch_size=32, seed=5)
    x_all, y_all = dm.split_tensors("train")
    loader = dm.train_dataloader()
    assert len(loader) == 4  # 99 samples: 3 full batches + 1 partial (drop_last is off)
    seen = []
    for x, y, index in loader:
        assert torch.equal(x, x_all[index]) and torch.equal(y, y_all[index])
        seen.append(index)
    assert sorted(torch.cat(seen).tolist()) == list(range(99))
    assert (
        len(create_datamodule("synthetic", num_samples=110, batch_size=32, drop_last=True).train_dataloader())
        == 3
    )
    val = [idx for _, _, idx in dm.val_dataloader()]
    assert len(val) == 1 and val[0].tolist() == list(range(11))  # unshuffled, eval_batch_size


def test_batches_are_made_on_the_data_device_and_the_splits_stay_on_the_cpu():
    """data.device=auto follows the trainer's device; evaluation and caches keep the CPU splits. The meta
    device stands in for an accelerator here: indexing and shuffling run there, no kernel needs a GPU."""
    dm = create_datamodule("synthetic", num_samples=110, batch_size=32, seed=5, device="auto")
    dm.use_device(torch.device("cpu"))
    x, y, index = next(iter(dm.train_dataloader()))
    assert x.device.type == y.device.type == index.device.type == "cpu"
    dm.use_device(torch.device("meta"))  # auto: the trainer's device
    for loader in (dm.train_dataloader(), dm.val_dataloader()):
        x, y, index = next(iter(loader))
        assert x.device.type == y.device.type == index.device.type == "meta"
        assert x.shape[1:] == dm.input_shape and len(x) == len(index) == min(len(loader.y), loader.batch_size)
    assert all(dm.split_tensors(s)[0].device.type == "cpu" for s in ("train", "val", "test"))
    assert dm.batch_tensors("train")[0] is dm.batch_tensors("train")[0]  # copied once, not per loader
    dm.use_device(torch.device("cpu"))
    assert next(iter(dm.train_dataloader()))[0].device.type == "cpu"
    dm.use_device(torch.device("meta"), processes=2)  # DDP: each rank's batches are moved by Lightning
    assert next(iter(dm.train_dataloader()))[0].device.type == "cpu"
    pinned = create_datamodule("synthetic", num_samples=110, batch_size=32, device="cpu")
    pinned.use_device(torch.device("meta"))  # device=cpu: batches stay on the host whatever the trainer
    assert next(iter(pinned.train_dataloader()))[0].device.type == "cpu"


def test_pin_memory_only_for_host_batches_of_a_cuda_trainer(monkeypatch):
    pinned_calls = []
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda t: pinned_calls.append(t.shape) or t)
    for device, pin, trainer, expect in (("cpu", True, "cuda", True), ("cpu", True, "cpu", False),
                                          ("cpu", False, "cuda", False), ("auto", True, "cpu", False)):
        dm = create_datamodule("synthetic", num_samples=110, batch_size=32, device=device, pin_memory=pin)
        dm.use_device(torch.device(trainer))  # a torch.device("cuda") object needs no GPU
        pinned_calls.clear()
        x, y, index = next(iter(dm.train_dataloader()))
        assert dm.pins_batches is expect
        assert pinned_calls == ([x.shape, y.shape, index.shape] if expect else [])


def test_bad_data_device_is_named():
    for bad in ("gpu0", "banana", 3.5):
        with pytest.raises(ValueError, match=rf"data.device must be auto, cpu or a torch device.*got {bad!r}"):
            create_datamodule("digits", device=bad)
    with pytest.raises(ValueError, match="data.pin_memory must be true or false, got 'yes'"):
        create_datamodule("digits", pin_memory="yes")


def test_shuffle_reproducible_and_new_each_epoch():
    def orders(seed, epochs=2):
        loader = create_datamodule("synthetic", num_samples=100, batch_size=16, seed=seed).train_dataloader()
        return [torch.cat([idx for _, _, idx in loader]).tolist() for _ in range(epochs)]

    first, again, other = orders(0), orders(0), orders(1)
    assert first == again and first[0] != first[1] and first[0] != other[0]
    loader = create_datamodule("synthetic", num_samples=100, batch_size=16).train_dataloader()
    loader.set_epoch(1)
    assert torch.cat([idx for _, _, idx in loader]).tolist() == first[1]


def test_augmentation_batched_per_sample_and_deterministic():
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).view(2, 3, 8, 8).repeat(32, 1, 1, 1)  # 64 samples
    fill = torch.tensor([-1.0, -2.0, -3.0])
    out = random_crop_flip(x, epoch_generator(0, 0), padding=2, flip=True, fill=fill)
    assert out.shape == x.shape
    assert torch.equal(out, random_crop_flip(x, epoch_generator(0, 0), padding=2, flip=True, fill=fill))
    assert len(rows(out[0::2])) > 10  # identical inputs, different crops/flips
    # reference: one sample at a time, with the same random numbers
    gen = epoch_generator(0, 0)
    dy, dx = torch.randint(0, 5, (64, 1), generator=gen), torch.randint(0, 5, (64, 1), generator=gen)
    flipped = torch.rand(64, 1, generator=gen) < 0.5
    padded = fill.view(1, 3, 1, 1).repeat(64, 1, 12, 12)
    padded[:, :, 2:10, 2:10] = x
    for i in range(64):
        want = padded[i, :, dy[i] : dy[i] + 8, dx[i] : dx[i] + 8]
        assert torch.equal(out[i], want.flip(-1) if flipped[i] else want)
    assert flipped.any() and not flipped.all() and (out == -2.0).any()


def test_train_loader_augments_only_training_batches():
    dm = create_datamodule("cifar10", augment=True)  # class attributes only: no files needed here
    assert dm.flip and dm.crop_padding == 4
    dm = create_datamodule("synthetic", num_samples=64, augment=True, batch_size=64)
    x_all, _ = dm.split_tensors("train")
    x, _, index = next(iter(dm.train_dataloader()))
    assert x.shape == x_all[index].shape and not torch.equal(x, x_all[index])
    x, _, index = next(iter(dm.val_dataloader()))
    assert torch.equal(x, dm.split_tensors("val")[0][index])
    digits = create_datamodule("digits", augment=True)
    assert not digits.flip and digits.crop_padding == 1  # digits: crop only


def test_fingerprint():
    make = lambda **kw: create_datamodule("synthetic", num_samples=50, **kw)
    base = make().fingerprint()
    json.dumps(base)
    assert make(batch_size=7, seed=9, eval_batch_size=3).fingerprint() == base
    for change in (
        {"limit": 10},
        {"split_seed": 1},
        {"augment": True},
        {"val_fraction": 0.2},
        {"data_seed": 1},
    ):
        assert make(**change).fingerprint() != base, change


# --- Lightning -------------------------------------------------------------------------------------
class IndexRecorder(L.LightningModule):
    def __init__(self, in_features: int, num_classes: int):
        super().__init__()
        self.linear = nn.Linear(in_features, num_classes)
        self.train_seen: dict[int, list[torch.Tensor]] = defaultdict(list)
        self.val_batches = 0

    def training_step(self, batch, batch_idx):
        x, y, index = batch
        self.train_seen[self.current_epoch].append(index)
        return F.cross_entropy(self.linear(x.flatten(1)), y)

    def validation_step(self, batch, batch_idx):
        self.val_batches += 1

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


@pytest.mark.parametrize("reload_every", [0, 1])
def test_lightning_fit_sees_each_training_sample_once_per_epoch(reload_every):
    dm = create_datamodule("synthetic", num_samples=120, image_size=8, batch_size=16, seed=3)
    model = IndexRecorder(3 * 8 * 8, 10)
    # reload_every=1 hands out a fresh loader each epoch: the order must still follow the trainer's epoch
    trainer = L.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        reload_dataloaders_every_n_epochs=reload_every)  # fmt: skip
    trainer.fit(model, datamodule=dm)
    orders = [torch.cat(model.train_seen[e]).tolist() for e in range(2)]
    for order in orders:
        assert sorted(order) == list(range(dm.num_train))
    assert orders[0] != orders[1] and model.val_batches > 0
    loader = dm.train_dataloader()  # the trainer's epochs drive the order: replayable outside it
    assert [torch.cat([i for _, _, i in loader]).tolist() for _ in range(2)] == orders


def test_synthetic_is_learnable():
    torch.manual_seed(0)
    dm = create_datamodule("synthetic", batch_size=64)
    net = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10),
    )  # fmt: skip
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    loader = dm.train_dataloader()
    for _ in range(2):
        for x, y, _ in loader:
            opt.zero_grad()
            F.cross_entropy(net(x), y).backward()
            opt.step()
    x, y = dm.split_tensors("test")
    with torch.no_grad():
        accuracy = (net(x).argmax(1) == y).float().mean().item()
    assert accuracy > 0.9, accuracy


def test_files_are_decoded_once_per_process_until_they_change(tmp_path, monkeypatch):
    """An in-process sweep builds a data module per trial: the files are read and hashed once."""
    from kdexp.data import base
    from kdexp.data.idx import IdxDataModule

    make_mnist_dir(tmp_path / "m", gz=True)
    monkeypatch.setattr(base, "_RAW_MEMO", {})
    reads = []
    real = IdxDataModule.load_raw
    monkeypatch.setattr(IdxDataModule, "load_raw", lambda self: reads.append(1) or real(self))
    first = create_datamodule("mnist", root=str(tmp_path / "m"), limit=10)
    second = create_datamodule("mnist", root=str(tmp_path / "m"), val_fraction=0.5, seed=3)
    first.setup(), second.setup()
    assert len(reads) == 1 and first.fingerprint()["content_blake2b"] == second.fingerprint()["content_blake2b"]
    assert len(first.split_tensors("train")[1]) == 10 and len(second.split_tensors("val")[1]) == 15
    write_idx(tmp_path / "m" / "t10k-labels-idx1-ubyte", np.zeros(12, np.uint8), gz=True)  # a changed file
    third = create_datamodule("mnist", root=str(tmp_path / "m"))
    third.setup()
    assert len(reads) == 2 and third.fingerprint()["content_blake2b"] != first.fingerprint()["content_blake2b"]
    assert third.split_tensors("test")[1].tolist() == [0] * 12
