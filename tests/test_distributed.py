"""Two real processes in a gloo group (CPU): what each DDP rank computes alone must agree across ranks."""

from __future__ import annotations

import socket
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from kdexp.data import TensorBatchLoader
from kdexp.distill import create_method
from kdexp.models.base import FeatureOutput
from kdexp.module import DistillModule

N, FEAT, WORLD = 40, 6, 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_ranks(fn, *args, timeout: float = 120) -> None:
    """fn(rank, *args) in WORLD processes. Forked, not spawned: a spawned child re-imports torch, Lightning
    and kdexp (40 s on a loaded 2-core machine, against 1 s); a hang fails the test instead of CI."""
    context = mp.start_processes(fn, args=args, nprocs=WORLD, join=False, start_method="fork")
    deadline = time.monotonic() + timeout
    while not context.join(timeout=1):
        if time.monotonic() > deadline:
            for p in context.processes:
                p.kill()
            pytest.fail(f"the {WORLD} ranks did not finish within {timeout} s")


def crd(seed: int = 0):
    torch.manual_seed(seed)
    method = create_method("crd", feat_dim=4, num_negatives=8)
    shapes = FeatureOutput(torch.zeros(2, 3), [], [], torch.zeros(2, FEAT))
    method.build(shapes, shapes, 3, N)
    return method.train()


def crd_step(method, index: torch.Tensor) -> None:
    g = torch.Generator().manual_seed(1)  # both sides of every sample: a function of the sample, not the rank
    emb_s, emb_t = torch.randn(N, FEAT, generator=g), torch.randn(N, FEAT, generator=g)
    logits = torch.zeros(len(index), 3)
    method(FeatureOutput(logits, [], [], emb_s[index]), FeatureOutput(logits, [], [], emb_t[index]),
           index % 3, index, 0)


def worker(rank: int, port: int, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        y = torch.arange(N) % 3
        loader = TensorBatchLoader(torch.arange(N, dtype=torch.float32), y, 8, shuffle=True, seed=2)
        epochs = [torch.cat([i for _, _, i in loader]) for _ in range(2)]  # shard from the process group
        method = crd()
        for batch in epochs[0].split(8):  # each rank updates the bank rows of its own samples
            crd_step(method, batch)
        sums: dict = {}  # rank r's epoch: r + 1 batches, loss = rank + 1, 1 correct per batch
        for _ in range(rank + 1):
            DistillModule._accumulate(sums, 4, correct=torch.tensor(1), loss=torch.tensor(float(rank + 1)))
        metrics = DistillModule._epoch_means(sums, "train")
        torch.save({"epochs": epochs, "bank": (method.memory_student, method.memory_teacher, method.labels),
                    "z": method.z, "metrics": metrics}, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_gloo_ranks_shard_data_share_the_crd_bank_and_reduce_metrics(tmp_path):
    run_ranks(worker, free_port(), str(tmp_path))
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    for epoch in range(2):  # the loader found rank and world in the process group: disjoint halves of the split
        seen = [r["epochs"][epoch].tolist() for r in ranks]
        assert len(seen[0]) == len(seen[1]) == N // 2 and sorted(seen[0] + seen[1]) == list(range(N))
    assert ranks[0]["epochs"][0].tolist() != ranks[0]["epochs"][1].tolist()
    # every rank's bank is identical, and equal to one process updating with both ranks' batches
    for a, b in zip(ranks[0]["bank"], ranks[1]["bank"]):
        assert torch.equal(a, b)
    assert torch.equal(ranks[0]["z"], ranks[1]["z"])
    single = crd()
    for b0, b1 in zip(ranks[0]["epochs"][0].split(8), ranks[1]["epochs"][0].split(8)):
        crd_step(single, torch.cat([b0, b1]))
    assert torch.equal(single.labels, ranks[0]["bank"][2]) and (single.labels >= 0).all()
    assert torch.allclose(single.memory_student, ranks[0]["bank"][0], atol=1e-6)
    assert torch.allclose(single.memory_teacher, ranks[0]["bank"][1], atol=1e-6)
    assert not torch.allclose(crd().memory_student, single.memory_student)  # the updates did something
    # epoch metrics: sums over both ranks' samples (rank 0: 4 samples at loss 1; rank 1: 8 at loss 2)
    for r in ranks:
        assert r["metrics"] == pytest.approx({"train/acc": 3 / 12, "train/loss": (4 * 1 + 8 * 2) / 12})
