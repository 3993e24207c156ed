"""In-memory tensor data modules: load, split, limit and normalize once, then batch by indexing."""

from __future__ import annotations

import hashlib
from typing import ClassVar

import lightning as L
import torch
from torch import Tensor

from kdexp.caching.fingerprint import remember
from kdexp.config.registry import Registry
from kdexp.data.loader import TensorBatchLoader, check_int

DATASETS: Registry[TensorDataModule] = Registry("data set")

# Bump when loading/splitting/normalizing code changes what a model sees: invalidates cached teachers.
FINGERPRINT_VERSION = 1
SPLITS = ("train", "val", "test")
# In-process memo of decoded files and their content hash: the trials of an in-process sweep (and a
# matrix's cells) would otherwise read, gunzip and hash the same files every trial (~0.5 s for Fashion).
_RAW_MEMO: dict[tuple, tuple[tuple[Tensor, ...], str]] = {}
_RAW_MEMO_KEPT = 2


class DataFormatError(ValueError):
    """A data file exists but its content is not what the format promises."""


class DataNotFoundError(FileNotFoundError):
    """No copy of a data set was found anywhere we looked (and none could be downloaded)."""


def check_device(device: object) -> None:
    if device in (None, "auto"):
        return
    try:
        torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(
            f"data.device must be auto, cpu or a torch device such as cuda or cuda:1, got {device!r}") from None


def random_crop_flip(x: Tensor, gen: torch.Generator, padding: int, flip: bool, fill: Tensor) -> Tensor:
    """Per-sample random crop (after padding with `fill`, shape (C,)) and horizontal flip, as one gather.

    Random numbers come from the CPU generator so results do not depend on the batch's device.
    """
    b, c, h, w = x.shape
    padded = fill.to(x).view(1, c, 1, 1).repeat(b, 1, h + 2 * padding, w + 2 * padding)
    padded[:, :, padding : padding + h, padding : padding + w] = x
    dy = torch.randint(0, 2 * padding + 1, (b, 1), generator=gen).to(x.device)
    dx = torch.randint(0, 2 * padding + 1, (b, 1), generator=gen).to(x.device)
    cols = torch.arange(w, device=x.device).expand(b, w)
    if flip:
        flipped = (torch.rand(b, 1, generator=gen) < 0.5).to(x.device)
        cols = torch.where(flipped, w - 1 - cols, cols)
    rows = torch.arange(h, device=x.device) + dy  # (B, H)
    cols = cols + dx  # (B, W)
    batch = torch.arange(b, device=x.device).view(b, 1, 1)
    out = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]  # (B, H, W, C)
    return out.permute(0, 3, 1, 2).contiguous()


def raw_digest(raw) -> str:
    """Hash of raw tensors (dtypes, shapes, values): the content part of a data fingerprint."""
    digest = hashlib.blake2b(digest_size=16)
    for t in raw:
        digest.update(str((t.dtype, tuple(t.shape))).encode())
        digest.update(t.contiguous().numpy().tobytes())
    return digest.hexdigest()


class TensorDataModule(L.LightningDataModule):
    """Base of every data set: subclasses set the class attributes and implement `load_raw`.

    Kwargs (the `data:` config section, plus the run seed):
      root          the folder holding the files; when given, the only place searched (file-based only)
      limit         cap on each split's size (a fixed random subset), for quick runs
      val_fraction  part of the official train set held out for validation, in (0, 1)
      split_seed    seeds the train/val split and the limit subsets; independent of the run seed
      batch_size, eval_batch_size, drop_last   training / evaluation loader settings
      augment       random crop (+ horizontal flip where `flip` is True) on training batches
      seed          run seed: shuffling and augmentation only
      download      None: download unless KDEXP_OFFLINE=1; True/False forces it (file-based only)
      device        where training/validation batches are made (indexing, augmentation): "auto" = the
                    trainer's device (the splits are copied there once, so batches never cross the bus),
                    "cpu", "cuda", "cuda:1", ...; None = CPU. Evaluation and caches use the CPU splits.
      pin_memory    page-locked batches when they are made on the CPU for a CUDA trainer
    """

    name: ClassVar[str]
    num_classes: int
    in_channels: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_names: tuple[str, ...] | None = None
    flip: bool = True  # does a horizontally flipped sample keep its class?
    crop_padding: int = 4
    finish_batch = None  # a method (x) -> x applied to every loader batch (text: dynamic padding)

    def __init__(
        self,
        *,
        root: str | None = None,
        limit: int | None = None,
        val_fraction: float = 0.1,
        split_seed: int = 0,
        batch_size: int = 128,
        eval_batch_size: int = 1024,
        augment: bool = False,
        seed: int = 0,
        drop_last: bool = False,
        download: bool | None = None,
        device: str | None = None,
        pin_memory: bool = False,
    ):
        super().__init__()
        check_int("limit", limit, 1, allow_none=True)
        check_int("split_seed", split_seed, 0)
        check_int("batch_size", batch_size, 1)
        check_int("eval_batch_size", eval_batch_size, 1)
        check_int("seed", seed, 0)
        if (
            isinstance(val_fraction, bool)
            or not isinstance(val_fraction, (int, float))
            or not 0 < val_fraction < 1
        ):
            raise ValueError(
                f"data.val_fraction must be a number in (0, 1) (exclusive), got {val_fraction!r}"
            )
        check_device(device)
        for key, value in (("augment", augment), ("drop_last", drop_last), ("pin_memory", pin_memory)):
            if not isinstance(value, bool):
                raise ValueError(f"data.{key} must be true or false, got {value!r}")
        self.root, self.limit, self.val_fraction, self.split_seed = (
            root,
            limit,
            float(val_fraction),
            split_seed,
        )
        self.batch_size, self.eval_batch_size, self.drop_last = batch_size, eval_batch_size, drop_last
        self.augment, self.seed, self.download, self.device = augment, seed, download, device
        self.pin_memory = pin_memory
        self._batch_device, self._pin = torch.device("cpu"), False  # set per fit by use_device
        self._device_copies: dict[str, tuple[Tensor, Tensor]] = {}
        self._splits: dict[str, tuple[Tensor, Tensor]] | None = None
        self._content_hash: str | None = None

    # --- subclass API -------------------------------------------------------------------------
    def load_raw(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Official (x_train, y_train, x_test, y_test); x as uint8 (0..255) or float in [0, 1], NCHW."""
        raise NotImplementedError

    def raw_source(self) -> tuple | None:
        """What load_raw reads, such that an equal value means equal raw tensors (files: path, size,
        mtime); None: not memoized."""
        return None

    def _raw_and_hash(self) -> tuple[tuple[Tensor, ...], str]:
        source = self.raw_source()
        if source is not None and source in _RAW_MEMO:
            return _RAW_MEMO[source]
        raw = self.load_raw()
        digest = raw_digest(raw)
        if source is not None:  # splits index and normalize into new tensors: the raw ones stay as read
            remember(_RAW_MEMO, source, (raw, digest), _RAW_MEMO_KEPT)
        return raw, digest

    # --- attributes ---------------------------------------------------------------------------
    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.in_channels, self.image_size, self.image_size)

    @property
    def num_train(self) -> int:
        return len(self.split_tensors("train")[1])

    # --- loading ------------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self._splits is None:
            raw, self._content_hash = self._raw_and_hash()
            self._splits = self._build_splits(*raw)

    def use_device(self, trainer_device: torch.device, processes: int = 1) -> None:
        """Make the loaders' batches where `device` says, for a trainer running on `trainer_device`. With
        several device processes (DDP), "auto" stays on the CPU: Lightning moves each rank's batches."""
        auto = trainer_device if processes == 1 else torch.device("cpu")
        target = auto if self.device == "auto" else torch.device(self.device or "cpu")
        if target != self._batch_device:
            self._device_copies.clear()
        self._batch_device = target
        self._pin = self.pin_memory and target.type == "cpu" and trainer_device.type == "cuda"

    @property
    def batch_device(self) -> torch.device:
        return self._batch_device

    @property
    def pins_batches(self) -> bool:
        return self._pin

    def batch_tensors(self, split: str) -> tuple[Tensor, Tensor]:
        """A split on the batch device (copied there once); split_tensors keeps the CPU copy."""
        x, y = self.split_tensors(split)
        if self._batch_device.type == "cpu":
            return x, y
        if split not in self._device_copies:
            self._device_copies[split] = (x.to(self._batch_device), y.to(self._batch_device))
        return self._device_copies[split]

    def _build_splits(self, x_tr: Tensor, y_tr: Tensor, x_te: Tensor, y_te: Tensor) -> dict:
        for split, x, y in (("train", x_tr, y_tr), ("test", x_te, y_te)):
            if tuple(x.shape[1:]) != self.input_shape or len(x) != len(y):
                c, h, w = self.input_shape
                raise DataFormatError(
                    f"{self.name} {split}: expected images of shape (N, {c}, {h}, {w}) and N labels,"
                    f" got {tuple(x.shape)} and {tuple(y.shape)}"
                )
            if len(y) and (int(y.min()) < 0 or int(y.max()) >= self.num_classes):
                raise DataFormatError(f"{self.name} {split}: labels outside 0..{self.num_classes - 1}")

        gen = torch.Generator().manual_seed(self.split_seed)
        perm = torch.randperm(len(y_tr), generator=gen)
        n_val = min(max(1, round(self.val_fraction * len(y_tr))), len(y_tr) - 1)
        index = {"val": perm[:n_val], "train": perm[n_val:], "test": torch.arange(len(y_te))}
        if self.limit is not None:  # prefixes of random orders: nested subsets as limit grows
            index["test"] = torch.randperm(len(y_te), generator=gen)
            index = {k: v[: self.limit] for k, v in index.items()}
        index = {k: v.sort().values for k, v in index.items()}
        source = {"train": (x_tr, y_tr), "val": (x_tr, y_tr), "test": (x_te, y_te)}
        return {k: (self.normalize(source[k][0][i]), source[k][1][i].long()) for k, i in index.items()}

    def normalize(self, x: Tensor) -> Tensor:
        x = x.float() / 255 if x.dtype == torch.uint8 else x.float()
        mean = torch.tensor(self.mean, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, -1, 1, 1)
        return (x - mean) / std

    def split_tensors(self, split: str) -> tuple[Tensor, Tensor]:
        """Whole normalized split as (x float32 NCHW, y int64); 'test' is for the final evaluation only."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
        self.setup()
        assert self._splits is not None
        return self._splits[split]

    # --- loaders ------------------------------------------------------------------------------
    def augment_batch(self, x: Tensor, gen: torch.Generator) -> Tensor:
        black = -torch.tensor(self.mean) / torch.tensor(self.std)  # pad with pixel value 0 before normalizing
        return random_crop_flip(x, gen, self.crop_padding, self.flip, black)

    def loader(
        self, split: str, *, batch_size: int | None = None, shuffle: bool = False, augment: bool = False
    ) -> TensorBatchLoader:
        """Training loaders (train, shuffled) pad DDP shards to equal length; the others never repeat a sample."""
        x, y = self.batch_tensors(split)
        training = split == "train" and shuffle
        return TensorBatchLoader(
            x,
            y,
            batch_size or (self.batch_size if training else self.eval_batch_size),
            shuffle=shuffle,
            seed=self.seed,
            drop_last=self.drop_last if training else False,
            augment=self.augment_batch if augment else None,
            epoch_fn=self.trainer_epoch if training else None,
            pin_memory=self._pin,
            pad_shards=training,
            finish=self.finish_batch,
        )

    def view_loader(self, x_views: Tensor, views: int) -> TensorBatchLoader:
        """The train loader over `views` fixed augmented copies of the train split (row = view * N + sample)."""
        _, y = self.batch_tensors("train")
        return TensorBatchLoader(
            x_views.to(self._batch_device), y, self.batch_size, shuffle=True, seed=self.seed,
            drop_last=self.drop_last, epoch_fn=self.trainer_epoch, pin_memory=self._pin, views=views,
            finish=self.finish_batch,
        )

    def trainer_epoch(self) -> int | None:
        """The epoch of the trainer fitting with this data module (`trainer.fit(datamodule=...)`), else None."""
        trainer = self.trainer
        return trainer.current_epoch if trainer is not None and trainer.training else None

    def train_dataloader(self) -> TensorBatchLoader:
        return self.loader("train", shuffle=True, augment=self.augment)

    def val_dataloader(self) -> TensorBatchLoader:
        return self.loader("val")

    def test_dataloader(self) -> TensorBatchLoader:
        return self.loader("test")

    # --- identity -----------------------------------------------------------------------------
    def fingerprint(self, role: str = "") -> dict:
        """Everything that defines the data a model sees (not batch size, run seed or location). `role` (teacher,
        student): whose view, where the models read different inputs (text with two tokenizations).

        Loads the data (once) to hash its raw content, so copies on other machines or in other
        compressions match and a changed file does not.
        """
        self.setup()
        return {
            "version": FINGERPRINT_VERSION,
            "name": self.name,
            "content_blake2b": self._content_hash,
            "input_shape": list(self.input_shape),
            "num_classes": self.num_classes,
            "limit": self.limit,
            "val_fraction": self.val_fraction,
            "split_seed": self.split_seed,
            "augment": {"crop_padding": self.crop_padding, "flip": self.flip} if self.augment else False,
            "mean": list(self.mean),
            "std": list(self.std),
        }
