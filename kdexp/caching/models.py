"""A content-addressed cache of trained models (teachers, vanilla baselines).

Keyed by a fingerprint of everything that defines the trained weights. Entries are written to a
temporary folder and renamed into place, so a crash never leaves a half-written entry; a file lock
(the portable `filelock` package) makes concurrent runs that need the same model train it once and
share it. Under DDP the lock is never held while training (see `get_or_create_distributed`).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from filelock import FileLock
from torch import nn

from kdexp.caching.state_map import candidates, map_state
from kdexp.runtime import distributed


@dataclass
class CacheEntry:
    key: str
    path: Path
    meta: dict

    @property
    def weights(self) -> Path:
        return self.path / "model.pt"


class ModelCache:
    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def lookup(self, key: str) -> CacheEntry | None:
        path = self.root / key
        meta_file = path / "meta.json"
        if not (meta_file.is_file() and (path / "model.pt").is_file()):
            return None
        return CacheEntry(key, path, json.loads(meta_file.read_text()))

    def lock(self, key: str) -> FileLock:
        """Held while one process makes `key`'s entry; others block on it (a context manager)."""
        return file_lock(self.root / f"{key}.lock")

    def store(self, key: str, model: nn.Module, meta: dict) -> CacheEntry:
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=self.root))
        try:
            torch.save(model.state_dict(), tmp / "model.pt")
            (tmp / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True, default=str))
            final = self.root / key
            if final.exists():  # a broken leftover (no meta.json or weights): replace it
                shutil.rmtree(final)
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return self.lookup(key)

    def get_or_create(
        self, key: str, create: Callable[[], tuple[nn.Module, dict]]
    ) -> tuple[CacheEntry, nn.Module | None]:
        """The entry for `key`, creating it under the lock if missing (one process; see the DDP variant).

        Returns (entry, model): model is the freshly trained one, or None on a cache hit.
        """
        entry = self.lookup(key)
        if entry is not None:
            return entry, None
        with self.lock(key):
            entry = self.lookup(key)  # another process may have finished it while we waited
            if entry is not None:
                return entry, None
            model, meta = create()
            return self.store(key, model, meta), model

    def publish(self, key: str, model: nn.Module, meta: dict) -> bool:
        """Store the entry unless another process did meanwhile (double-checked under the lock, held briefly).
        Returns whether this model is the one published."""
        with self.lock(key):
            if self.lookup(key) is not None:
                return False
            self.store(key, model, meta)
            return True

    def get_or_create_distributed(
        self, key: str, create: Callable[[], tuple[nn.Module, dict]]
    ) -> tuple[CacheEntry, nn.Module | None]:
        """get_or_create for code that every DDP rank runs: `create` trains under DDP, so all ranks call it.

        No lock is held while `create` runs: a rank holding it across the collectives of training would
        wait for ranks that wait for the lock (the hang of issue 13). Hit or miss is rank 0's answer once
        the process group exists (before it, each rank looks for itself); after training, rank 0 publishes
        (double-checked: a concurrent run may have published first, and then its entry wins) while the
        others wait, and every rank returns the published entry. Returns (entry, model): model is this
        run's trained one where it was published, else None (load the entry's weights). One process: the
        plain get_or_create.
        """
        if distributed.world_size() == 1:
            return self.get_or_create(key, create)
        if distributed.from_rank_zero(self.lookup(key) is not None):
            return self._published(key), None
        model, meta = create()
        outcome: tuple[bool, str | None] = (False, None)
        if distributed.is_rank_zero():
            try:
                outcome = (self.publish(key, model, meta), None)
            except Exception as exc:  # noqa: BLE001  (told to every rank below: none is left waiting)
                outcome = (False, f"{type(exc).__name__}: {exc}")
        ours, error = distributed.from_rank_zero(outcome)  # also the barrier: rank 0 has published
        if error is not None:
            raise RuntimeError(f"model cache: rank 0 could not publish entry {key}: {error}")
        return self._published(key), model if ours else None

    def _published(self, key: str) -> CacheEntry:
        entry = self.lookup(key)
        if entry is None:
            raise RuntimeError(f"model cache: entry {key} is missing under {self.root} on rank "
                               f"{distributed.rank()}; every rank must see the same cache folder")
        return entry


def file_lock(path: str | os.PathLike) -> FileLock:
    """An exclusive inter-process lock on `path` (created if missing), portable (filelock, not fcntl)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return FileLock(str(path))


def load_weights(model: nn.Module, path: str | os.PathLike, what: str) -> nn.Module:
    """Load a weights file safely (weights only, no pickled code) into `model`.

    Takes kdexp's own files, Lightning checkpoints (`state_dict` under a student./teacher./model. prefix),
    RepDistiller/mdistiller's `{'model': state_dict}` and torchvision's bare state dicts: names that differ
    are matched by position and shape (kdexp.caching.state_map). Nothing is loaded unless every tensor maps.

    Args:
        model: the model to fill, built for the data (classes, input channels).
        path: the weights file.
        what: the setting it came from, for messages (e.g. "teacher.ckpt (resnet32x4, 100 classes)").

    Returns:
        `model`, loaded. Raises FileNotFoundError, or ValueError naming the first tensor that does not fit.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what}: checkpoint {str(path)!r} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"{what}: {str(path)!r} is not a readable weights file ({exc})") from None
    found = candidates(obj)
    if not found:
        raise ValueError(f"{what}: {str(path)!r} holds a {type(obj).__name__} without tensors, not a state dict")
    own = model.state_dict()
    first_error = None
    for state in found:
        try:
            mapped = map_state(state, own)
        except ValueError as exc:
            first_error = first_error or exc
            continue
        model.load_state_dict(mapped)
        return model
    raise ValueError(
        f"{what}: checkpoint {str(path)!r} does not fit this model: {first_error}; "
        "check the architecture, num_classes and in_channels"
    )
