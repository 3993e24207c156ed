"""The one batch iterator: plain, cached-teacher and multi-view batches, sharded across DDP ranks.

A batch is made by indexing whole-split tensors (no DataLoader, no workers, no collation). Lightning
accepts any sized iterable as a dataloader, but then gives it no DistributedSampler: the loader shards
itself, with DistributedSampler's contract, and is Stateful, so Lightning's checkpoints carry its
data order (see `state_dict`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

from kdexp.config.rules import check_number

Batch = tuple[Tensor, Tensor, Tensor]
AugmentFn = Callable[[Tensor, torch.Generator], Tensor]


def check_int(key: str, value: object, minimum: int, *, allow_none: bool = False) -> None:
    """data.<key> is an integer >= minimum (or None with `allow_none`); else a ConfigError naming it."""
    if value is None and allow_none:
        return
    check_number(f"data.{key}", value, integer=True, ge=minimum)


def epoch_generator(seed: int, epoch: int, *more: int) -> torch.Generator:
    # SeedSequence mixes (seed, epoch) so that run seed s at epoch e+1 is unrelated to seed s+1 at epoch e.
    state = np.random.SeedSequence([seed, epoch, *more]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


def process_group_shard() -> tuple[int, int]:
    """(rank, world size) of torch.distributed's default group, or (0, 1) outside one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class TensorBatchLoader:
    """Yields (x, y, index) batches by indexing whole-split tensors.

    Order: shuffle and augmentation come from a generator seeded by (seed, epoch); the epoch is
    `epoch_fn()` (the trainer's current epoch) when that gives one, else counts the calls to `iter()`
    (see `set_epoch`, `state_dict`).

    Views (`views=K`, for cached teacher outputs of augmented copies): `x` holds K fixed copies of the
    split, row = view * N + sample, and `y` the N labels. Each epoch every sample is taken from one view
    drawn for it (after the shuffle, from the same generator), and `index` is that row, so the teacher
    outputs of exactly that view are looked up; `views=0`: index = sample position within the split.

    Sharding (torch's DistributedSampler contract): with (rank, world) from `shard()` or, if never
    called, from torch.distributed's default group at iteration time, every rank draws the same
    epoch order and takes positions rank, rank + world, ... of it. `pad_shards=True` (training): the
    order is first padded by repeating its head to a multiple of `world`, so every rank gets
    ceil(N / world) samples and the same number of batches (DDP synchronises every step); the few
    repeated samples are seen twice that epoch. `pad_shards=False` (evaluation): nothing is repeated,
    shards differ in size by at most one, so summed metrics count every sample exactly once.
    With world > 1, augmentation draws from a generator seeded by (seed, epoch, rank).
    """

    def __init__(
        self,
        x: Tensor,
        y: Tensor,
        batch_size: int,
        *,
        shuffle: bool = False,
        seed: int = 0,
        drop_last: bool = False,
        augment: AugmentFn | None = None,
        epoch_fn: Callable[[], int | None] | None = None,
        pin_memory: bool = False,
        views: int = 0,
        pad_shards: bool = True,
        finish: Callable[[Tensor], Tensor] | None = None,
    ):
        check_int("batch_size", batch_size, 1)
        check_int("views", views, 0)
        if len(x) != max(views, 1) * len(y):
            raise ValueError(f"x has {len(x)} rows; {max(views, 1)} view(s) of {len(y)} samples need "
                             f"{max(views, 1) * len(y)}")
        self.x, self.y, self.pin_memory, self.views = x, y, pin_memory, views
        self.batch_size, self.shuffle, self.seed, self.drop_last = batch_size, shuffle, seed, drop_last
        self.augment, self.epoch_fn, self.pad_shards = augment, epoch_fn, pad_shards
        self.finish = finish  # last touch on every batch's x (text: cut to the batch's longest sequence)
        self._next_epoch = 0
        self._shard: tuple[int, int] | None = None

    # --- which part of which epoch ---------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        self._next_epoch = epoch

    def shard(self, rank: int, world_size: int) -> TensorBatchLoader:
        """Serve rank `rank`'s shard of `world_size` (instead of torch.distributed's); returns self."""
        check_number("world_size", world_size, integer=True, ge=1)
        check_number("rank", rank, integer=True, ge=0, lt=world_size)
        self._shard = (rank, world_size)
        return self

    def rank_and_world(self) -> tuple[int, int]:
        return self._shard if self._shard is not None else process_group_shard()

    def num_samples(self) -> int:
        """Samples this rank serves per epoch."""
        n = len(self.y)
        rank, world = self.rank_and_world()
        return -(-n // world) if self.pad_shards else len(range(rank, n, world))

    def __len__(self) -> int:
        n = self.num_samples()
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def epoch_indices(self, epoch: int, gen: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """(samples, rows) this rank serves in `epoch`, in order; rows = samples without views."""
        gen = epoch_generator(self.seed, epoch) if gen is None else gen
        n = len(self.y)
        order = torch.randperm(n, generator=gen) if self.shuffle else torch.arange(n)
        rows = order
        if self.views:  # one view per sample: its row in x
            rows = torch.randint(self.views, (n,), generator=gen)[order] * n + order
        rank, world = self.rank_and_world()
        if world > 1:
            total = -(-n // world) * world if self.pad_shards else n
            pad = torch.arange(total) % n  # positions in the order, the head repeated to `total`
            order, rows = order[pad[rank::world]], rows[pad[rank::world]]
        return order.to(self.y.device), rows.to(self.y.device)

    # --- batches -------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[Batch]:
        epoch = self.epoch_fn() if self.epoch_fn is not None else None
        epoch = self._next_epoch if epoch is None else epoch
        self._next_epoch = epoch + 1
        gen = epoch_generator(self.seed, epoch)
        order, rows = self.epoch_indices(epoch, gen)
        rank, world = self.rank_and_world()
        if world > 1 and self.augment is not None:  # decorrelate the ranks' crops
            gen = epoch_generator(self.seed, epoch, rank)
        b = self.batch_size
        for i in range(len(self)):
            index = order[i * b : (i + 1) * b]
            batch_rows = rows[i * b : (i + 1) * b] if self.views else index
            xb = self.x[batch_rows]
            if self.augment is not None:
                xb = self.augment(xb, gen)
            if self.finish is not None:
                xb = self.finish(xb)
            batch = (xb, self.y[index], batch_rows)
            # page-locked host batches: the trainer's non-blocking copy to the GPU overlaps the step
            yield tuple(t.pin_memory() for t in batch) if self.pin_memory else batch

    # --- resume ----------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The data order to continue with: the next epoch to serve and the seed. Lightning's fit loop
        stores a Stateful train loader's state in every checkpoint, but hands it back only when it restarts
        mid-epoch; at an epoch boundary it relies on `set_epoch` (see `follow_trainer_epoch`)."""
        return {"epoch": self._next_epoch, "seed": self.seed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("seed") != self.seed:
            raise ValueError(f"the checkpoint's data order used seed {state.get('seed')!r}, "
                             f"this loader's seed is {self.seed!r}: resume with the same data.seed")
        self._next_epoch = int(state["epoch"])


def follow_trainer_epoch(trainer) -> None:
    """Set the trainer's current epoch on its TensorBatchLoader train loaders: call in on_train_epoch_start.

    Lightning does this for a DataLoader's sampler (`sampler.set_epoch`), not for other iterables; without
    it a loader counts its own epochs, which restart at 0 in a fit resumed from a checkpoint.
    """
    loaders = trainer.train_dataloader
    if isinstance(loaders, dict):
        loaders = list(loaders.values())
    elif not isinstance(loaders, (list, tuple)):
        loaders = [loaders]
    for loader in loaders:
        if isinstance(loader, TensorBatchLoader):
            loader.set_epoch(trainer.current_epoch)
