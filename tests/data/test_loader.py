"""The one batch iterator: DDP shards (DistributedSampler's contract), views, data-order state."""

from __future__ import annotations

import math

import pytest
import torch

from kdexp.data import TensorBatchLoader, create_datamodule


def split(n: int = 23, views: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    y = torch.arange(n) % 5
    x = torch.arange(max(views, 1) * n, dtype=torch.float32).view(-1, 1, 1, 1)  # x[row] = row
    return x, y


def rank_epoch(loader: TensorBatchLoader) -> tuple[list[list[int]], list[int]]:
    """One epoch: each batch's rows, and the samples in order (checked against x and y on the way)."""
    batches, samples = [], []
    for xb, yb, rows in loader:
        assert torch.equal(xb.view(-1).long(), rows)  # x[row] = row: the batch is the rows it names
        sample = rows % len(loader.y)
        assert torch.equal(yb, loader.y[sample])
        batches.append(rows.tolist())
        samples += sample.tolist()
    return batches, samples


@pytest.mark.parametrize("views", [0, 3])
@pytest.mark.parametrize("n", [24, 23])
def test_two_ranks_batches_are_disjoint_and_cover_the_split_every_epoch(n, views):
    x, y = split(n, views)
    make = lambda: TensorBatchLoader(x, y, 5, shuffle=True, seed=7, views=views)
    whole, ranks = make(), [make().shard(r, 2) for r in range(2)]
    # equal batch counts: DDP steps in lock-step
    assert len(ranks[0]) == len(ranks[1]) == math.ceil(math.ceil(n / 2) / 5)
    for epoch in range(3):
        _, order = rank_epoch(whole)
        (b0, s0), (b1, s1) = (rank_epoch(r) for r in ranks)
        assert len(s0) == len(s1) == -(-n // 2)
        # rank r takes positions r, r + 2, ... of the epoch's single-process order, padded by its head
        padded = order + order[: 2 * len(s0) - n]
        assert s0 == padded[0::2] and s1 == padded[1::2]
        assert sorted(set(s0) | set(s1)) == list(range(n))  # every sample, every epoch
        repeated = set(s0) & set(s1)
        assert repeated == set(order[: 2 * len(s0) - n])  # only the documented padding is seen twice
        if views:  # both ranks draw the same view per sample as one process does
            rows_whole = {r % n: r for batch in rank_epoch_rows(whole, epoch) for r in batch}
            assert all(rows_whole[r % n] == r for batch in b0 + b1 for r in batch)
    assert rank_epoch(ranks[0])[1] != s0  # a new shuffle next epoch


def rank_epoch_rows(loader: TensorBatchLoader, epoch: int) -> list[list[int]]:
    loader.set_epoch(epoch)
    return rank_epoch(loader)[0]


@pytest.mark.parametrize("n", [24, 23])
def test_evaluation_shards_repeat_nothing(n):
    x, y = split(n)
    ranks = [TensorBatchLoader(x, y, 4, pad_shards=False).shard(r, 2) for r in range(2)]
    s0, s1 = (rank_epoch(r)[1] for r in ranks)
    assert s0 == list(range(0, n, 2)) and s1 == list(range(1, n, 2))  # no shuffle: the plain order, dealt out
    assert len(ranks[0]) == len(range(0, n, 2)) // 4 + bool(len(range(0, n, 2)) % 4)


def test_one_rank_and_no_shard_are_the_same_batches():
    x, y = split(23)
    for a, b in zip(TensorBatchLoader(x, y, 4, shuffle=True), TensorBatchLoader(x, y, 4, shuffle=True).shard(0, 1)):
        assert all(torch.equal(s, t) for s, t in zip(a, b))


def test_a_rank_smaller_than_the_world_still_gets_full_shards():
    x, y = split(3)
    ranks = [TensorBatchLoader(x, y, 2, shuffle=True).shard(r, 4) for r in range(4)]
    assert [len(rank_epoch(r)[1]) for r in ranks] == [1, 1, 1, 1]


def test_data_module_loaders_pad_only_training():
    dm = create_datamodule("synthetic", num_samples=101, image_size=4, batch_size=8)
    assert dm.train_dataloader().pad_shards and not dm.val_dataloader().pad_shards
    assert not dm.test_dataloader().pad_shards and not dm.loader("train").pad_shards


@pytest.mark.parametrize("rank, world, match", [
    (2, 2, r"rank=2 is invalid: must be an integer in \[0, 2\)"),
    (0, 0, "world_size=0 is invalid: must be an integer >= 1"),
    (-1, 2, r"rank=-1 is invalid: must be an integer in \[0, 2\)"),
    (True, 2, "rank=True is invalid: must be an integer"),
])
def test_bad_shard_is_named(rank, world, match):
    x, y = split()
    with pytest.raises(ValueError, match=match):
        TensorBatchLoader(x, y, 4).shard(rank, world)


def test_views_need_k_copies_of_the_split():
    x, y = split(10)
    with pytest.raises(ValueError, match="x has 10 rows; 2 view"):
        TensorBatchLoader(x, y, 4, views=2)


def test_state_dict_replays_the_data_order_in_a_fresh_loader():
    x, y = split(23)
    make = lambda seed=3: TensorBatchLoader(x, y, 4, shuffle=True, seed=seed)
    run = make()
    rank_epoch(run)
    state = run.state_dict()
    assert state == {"epoch": 1, "seed": 3}
    resumed = make()
    resumed.load_state_dict(state)
    assert rank_epoch(resumed) == rank_epoch(run)  # epoch 1 in both
    with pytest.raises(ValueError, match="data order used seed 3, this loader's seed is 4"):
        make(seed=4).load_state_dict(state)
