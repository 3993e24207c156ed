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
from kdexp.modules.base import EpochSums
from kdexp.modules.distill import DistillModule

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
        sums = EpochSums()  # rank r's epoch: r + 1 batches, loss = rank + 1, 1 correct per batch
        for _ in range(rank + 1):
            sums.add(4, correct=torch.tensor(1), loss=torch.tensor(float(rank + 1)))
        metrics = sums.reduce("train")
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


def cache_worker(rank: int, port: int, root: str, out: str, fail: bool) -> None:
    from filelock import FileLock

    from kdexp.caching.models import ModelCache

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    cache, calls = ModelCache(root), []

    def create():
        calls.append(rank)
        if rank == 1:  # raises if rank 0 held the lock while training (rank 0 must not try it at the same time)
            with FileLock(f"{root}/k.lock", timeout=0):
                pass
        total = torch.ones(1)
        dist.all_reduce(total)  # a collective, as every DDP training step is
        model = torch.nn.Linear(2, 2)
        torch.nn.init.constant_(model.weight, float(total))
        return model, {"trained_by": rank}

    if fail and rank == 0:
        cache.store = lambda *a: (_ for _ in ()).throw(OSError("disk full"))
    try:
        entry, model = cache.get_or_create_distributed("k", create)
        again, none = cache.get_or_create_distributed("k", create)
        result = {"calls": calls, "meta": entry.meta, "fresh": model is not None, "again": again.meta,
                  "hit_model": none, "weight": torch.load(entry.weights, weights_only=True)["weight"]}
    except RuntimeError as exc:
        result = {"error": str(exc), "calls": calls}
    finally:
        dist.destroy_process_group()
    torch.save(result, f"{out}/cache{rank}.pt")


@pytest.mark.parametrize("fail", [False, True])
def test_ddp_ranks_train_together_and_rank_zero_publishes_without_holding_the_lock(tmp_path, fail):
    run_ranks(cache_worker, free_port(), str(tmp_path / "models"), str(tmp_path), fail)
    results = [torch.load(tmp_path / f"cache{r}.pt", weights_only=True) for r in range(WORLD)]
    for r, res in enumerate(results):
        assert res["calls"] == [r]  # every rank trained, once
        if fail:  # rank 0 could not publish: every rank is told, none waits forever
            assert res["error"] == "model cache: rank 0 could not publish entry k: OSError: disk full"
            continue
        assert res["meta"] == res["again"] == {"trained_by": 0}  # rank 0's entry, the same on every rank
        assert res["fresh"] and res["hit_model"] is None  # then a hit on every rank, without training
        assert torch.equal(res["weight"], torch.full((2, 2), 2.0))
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == (["k.lock"] if fail else ["k", "k.lock"])


@pytest.mark.parametrize("env, rank, world", [
    ({}, 0, 1),
    ({"LOCAL_RANK": "0", "WORLD_SIZE": "2"}, 0, 2),  # Lightning's rank 0 after it launched the others
    ({"LOCAL_RANK": "1", "WORLD_SIZE": "2", "NODE_RANK": "0"}, 1, 2),  # a rank Lightning launched
    ({"RANK": "3", "LOCAL_RANK": "1", "WORLD_SIZE": "4"}, 3, 4),  # torchrun
    ({"SLURM_PROCID": "0", "WORLD_SIZE": "2"}, 0, 2),
])
def test_rank_from_the_launchers_environment_before_a_process_group_exists(monkeypatch, env, rank, world):
    from kdexp.runtime import distributed

    for name in ("RANK", "LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "SLURM_PROCID", "JSM_NAMESPACE_RANK"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert (distributed.rank(), distributed.world_size(), distributed.is_rank_zero()) == (rank, world, rank == 0)
    monkeypatch.setenv("NODE_RANK", "1")
    assert distributed.rank() > 0 or "RANK" in env or "SLURM_PROCID" in env
    distributed.barrier()  # no group: returns at once
    assert distributed.from_rank_zero("mine") == "mine"


class IndexRecordingModule(DistillModule):
    """Writes what its rank trained on, and its best-epoch state, for the test to compare across ranks."""

    def __init__(self, out: str, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.out, self.seen = out, {}

    def training_step(self, batch, batch_idx):
        self.seen.setdefault(self.current_epoch, []).extend(batch[2].tolist())
        return super().training_step(batch, batch_idx)

    def on_train_end(self):
        torch.save({"seen": self.seen, "last": self.last_val_acc, "best": (self.best_val_acc, self.best_epoch)},
                   f"{self.out}/fit{self.global_rank}.pt")


def test_lightning_ddp_fit_shards_epochs_reduces_metrics_and_reports_once(tmp_path):
    import lightning as L

    from kdexp.data import create_datamodule
    from kdexp.models import create_model

    L.seed_everything(0, verbose=False)
    dm = create_datamodule("synthetic", num_samples=130, num_test=10, image_size=8, batch_size=16, seed=1)
    n_train, n_val = dm.num_train, len(dm.split_tensors("val")[1])  # 117 and 13: odd, shards differ in size
    sink = tmp_path / "sink.txt"
    report = lambda metrics, epoch: sink.open("a").write(f"{epoch} {metrics['val/acc']}\n")
    module = IndexRecordingModule(str(tmp_path), create_model("cnn_tiny", num_classes=10, in_channels=3),
                                  max_epochs=2, metric_sink=report)
    trainer = L.Trainer(max_epochs=2, accelerator="cpu", devices=WORLD, strategy="ddp_fork", logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, dm.train_dataloader(), dm.val_dataloader())
    ranks = [torch.load(tmp_path / f"fit{r}.pt", weights_only=True) for r in range(WORLD)]
    for epoch in range(2):
        s0, s1 = (r["seen"][epoch] for r in ranks)
        assert len(s0) == len(s1) == -(-n_train // WORLD) and sorted(set(s0) | set(s1)) == list(range(n_train))
        assert len(set(s0) & set(s1)) == WORLD * len(s0) - n_train  # the documented padding only
    assert ranks[0]["last"] == ranks[1]["last"] and ranks[0]["best"] == ranks[1]["best"]  # reduced: one decision
    assert (ranks[0]["last"] * n_val) == pytest.approx(round(ranks[0]["last"] * n_val))  # a count over all 13
    lines = sink.read_text().splitlines()
    assert [line.split()[0] for line in lines] == ["0", "1"]  # rank 0 only reported
    assert float(lines[1].split()[1]) == ranks[0]["last"]


def text_worker(rank: int, port: int, dm, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        loader = dm.train_dataloader()  # shards from the process group, as under Lightning's DDP
        epochs = [[(x, i) for x, _, i in loader] for _ in range(2)]
        torch.save(epochs, f"{out}/text{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_gloo_ranks_shard_dynamically_padded_text_batches(tmp_path):
    """Text batches under DDP: every train sample once per epoch on exactly one rank, each rank's batch cut to
    its own longest sequence, the tokens those of the sample's row."""
    pytest.importorskip("transformers", reason="the text extra (pip install kdexp[text])")
    from kdexp.data import create_datamodule

    dm = create_datamodule("text_synthetic", num_samples=60, num_test=10, tokenizer="train", vocab_size=200,
                           max_length=64, batch_size=8)
    dm.setup()
    full, _ = dm.split_tensors("train")
    assert dm.num_train % WORLD == 0  # no padding of the shards: each sample exactly once
    run_ranks(text_worker, free_port(), dm, str(tmp_path))
    ranks = [torch.load(tmp_path / f"text{r}.pt", weights_only=True) for r in range(WORLD)]
    widths = set()
    for epoch in range(2):
        seen = [torch.cat([i for _, i in r[epoch]]).tolist() for r in ranks]
        assert len(seen[0]) == len(seen[1]) == dm.num_train // WORLD
        assert sorted(seen[0] + seen[1]) == list(range(dm.num_train))
        for r in ranks:
            for x, i in r[epoch]:
                width = int(full[i, 1].sum(1).max())
                assert x.shape[-1] == width and torch.equal(x, full[i, :, :width])
                widths.add(width)
    assert len(widths) > 1 and max(widths) < dm.max_length  # batches were cut, each to its own length
    assert [torch.cat([i for _, i in r[0]]).tolist() for r in ranks] != \
        [torch.cat([i for _, i in r[1]]).tolist() for r in ranks]  # a new order every epoch
