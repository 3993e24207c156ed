"""CRD: NCE loss against a reference from the paper's formulas, memory bank, sampling, DDP path."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
import torch.distributed as dist

from kdexp.distill import create_method
from tests.distill.test_distill_common import features, make_identity

N, D, K, TAU, MOMENTUM = 6, 4, 3, 0.07, 0.5
rng = np.random.default_rng(1)


def l2n(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def make_crd(num_samples=N, **kwargs):
    e_s, e_t = rng.standard_normal((2, D)), rng.standard_normal((2, D))
    student, teacher = features([np.zeros((2, 1, 1, 1))], e_s), features([np.zeros((2, 1, 1, 1))], e_t)
    kwargs = {"feat_dim": D, "num_negatives": K, "nce_temperature": TAU, "momentum": MOMENTUM, **kwargs}
    method = create_method("crd", **kwargs)
    method.build(student, teacher, num_classes=3, num_samples=num_samples)
    return make_identity(method)


def nce_reference(anchor, bank, idx, n):
    out = np.exp(np.einsum("bkd,bd->bk", bank[idx], anchor) / TAU)
    p = out / (out.mean() * n)  # Z fixed from this (first) batch
    noise = (idx.shape[1] - 1) / n  # k * P_noise, P_noise = 1/n
    pos, neg = p[:, 0], p[:, 1:]
    return -(np.log(pos / (pos + noise + 1e-7)).sum() + np.log(noise / (neg + noise + 1e-7)).sum()) / len(p)


@pytest.mark.parametrize("dense_fraction", [4, 0], ids=["whole-bank GEMM", "gathered rows"])
def test_crd_loss_matches_reference_and_updates_the_banks(monkeypatch, dense_fraction):
    """Both ways of scoring (against the whole bank, or the gathered rows) give the paper's loss."""
    import kdexp.distill.crd as crd

    monkeypatch.setattr(crd, "DENSE_FRACTION", dense_fraction)
    method = make_crd()
    mem_s, mem_t = l2n(rng.standard_normal((N, D))), l2n(rng.standard_normal((N, D)))
    method.memory_student.copy_(torch.tensor(mem_s))
    method.memory_teacher.copy_(torch.tensor(mem_t))
    index, target = np.array([1, 4]), np.array([0, 2])
    idx = np.array([[1, 0, 2, 5], [4, 3, 3, 0]])  # positive first, then K negatives
    monkeypatch.setattr(method, "sample_indices", lambda index, target: torch.tensor(idx))
    e_s, e_t = rng.standard_normal((2, D)), rng.standard_normal((2, D))

    student = features([np.zeros((2, 1, 1, 1))], e_s)
    student.embedding.requires_grad_(True)
    terms = method(
        student, features([np.zeros((2, 1, 1, 1))], e_t), torch.tensor(target), torch.tensor(index), 0
    )
    v_s, v_t = l2n(e_s), l2n(e_t)
    expected = nce_reference(v_s, mem_t, idx, N) + nce_reference(v_t, mem_s, idx, N)
    assert set(terms) == {"crd"}
    assert terms["crd"].item() == pytest.approx(expected, rel=1e-5)

    terms["crd"].backward()  # after the in-place bank update: the graph must not depend on it
    assert student.embedding.grad.abs().sum() > 0
    assert all(p.grad is not None for p in method.embed_student.parameters())
    assert all(p.grad is not None for p in method.embed_teacher.parameters())

    new_s = mem_s.copy()
    new_s[index] = l2n(MOMENTUM * mem_s[index] + (1 - MOMENTUM) * v_s)
    np.testing.assert_allclose(method.memory_student.numpy(), new_s, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        method.memory_teacher.numpy()[index], l2n(MOMENTUM * mem_t[index] + (1 - MOMENTUM) * v_t), rtol=1e-5
    )
    assert method.labels.tolist() == [-1, 0, -1, -1, 2, -1]
    assert (method.z > 0).all()
    z = method.z.clone()
    method(student, features([np.zeros((2, 1, 1, 1))], e_t), torch.tensor(target), torch.tensor(index), 1)
    assert torch.equal(method.z, z)  # Z is fixed after the first batch


def test_crd_eval_mode_leaves_the_banks_alone():
    method = make_crd().eval()
    before = method.memory_student.clone()
    method(
        features([np.zeros((2, 1, 1, 1))], rng.standard_normal((2, D))),
        features([np.zeros((2, 1, 1, 1))], rng.standard_normal((2, D))),
        torch.tensor([0, 1]),
        torch.tensor([0, 1]),
        0,
    )
    assert torch.equal(method.memory_student, before) and (method.z < 0).all()
    with pytest.raises(ValueError, match="training batches only"):
        method(
            features([np.zeros((2, 1, 1, 1))], rng.standard_normal((2, D))),
            features([np.zeros((2, 1, 1, 1))], rng.standard_normal((2, D))),
            torch.tensor([0, 1]),
            torch.tensor([0, N]),
            0,
        )


def test_negatives_skip_the_anchor_and_avoid_its_class():
    torch.manual_seed(0)
    n = 400
    method = make_crd(num_samples=n, num_negatives=256)
    index = torch.arange(0, 64)
    target = index % 4
    idx = method.sample_indices(index, target)
    assert idx.shape == (64, 257) and torch.equal(idx[:, 0], index)
    assert (idx[:, 1:] != index[:, None]).all() and idx.min() >= 0 and idx.max() < n
    method.labels.copy_(torch.arange(n) % 4)  # labels known (after one epoch)
    neg = method.sample_indices(index, target)[:, 1:]
    same = (method.labels[neg] == target[:, None]).float().mean()
    assert same < 0.02  # uniform sampling would give 0.25
    assert (neg != index[:, None]).all()  # redraws skip the anchor too
    other = neg[method.labels[neg] != target[:, None]]  # redrawn entries are uniform over the other classes
    shares = torch.bincount(method.labels[other], minlength=4).float() / len(other)
    assert torch.allclose(shares, torch.full((4,), 0.25), atol=0.01)
    counts = torch.bincount(other, minlength=n).float()
    assert counts.std() / counts.mean() < 0.25  # and over their samples: ~41 draws each, Poisson std/mean 0.16


def shared_reference(anchor, bank, index, neg, valid, n):
    """NCE of one shared draw: row i's noise term has valid[i].sum() negatives; Z from the valid scores."""
    pos = np.exp((bank[index] * anchor).sum(1) / TAU)
    out = np.exp(anchor @ bank[neg].T / TAU)
    z = (pos.sum() + out[valid].sum()) / (len(pos) + valid.sum()) * n
    pos, out = pos / z, out / z
    mass = valid.sum(1) / n
    log_neg = np.where(valid, np.log(mass[:, None] / (out + mass[:, None] + 1e-7)), 0.0)
    return -(np.log(pos / (pos + mass + 1e-7)).sum() + log_neg.sum()) / len(pos)


def test_shared_negatives_loss_matches_reference_with_masked_rows(monkeypatch):
    """One draw for the batch; each row drops its own sample and its class, and counts what is left."""
    method = make_crd(shared_negatives=True)
    mem_s, mem_t = l2n(rng.standard_normal((N, D))), l2n(rng.standard_normal((N, D)))
    method.memory_student.copy_(torch.tensor(mem_s))
    method.memory_teacher.copy_(torch.tensor(mem_t))
    method.labels.copy_(torch.tensor([0, 1, 2, 0, 1, 2]))
    index, target = np.array([1, 3]), np.array([1, 0])
    neg = np.array([1, 0, 5])  # row 0: drops 1 (itself); row 1: drops 0 (its class)
    monkeypatch.setattr(torch, "randint", lambda *a, **k: torch.tensor(neg))
    e_s, e_t = rng.standard_normal((2, D)), rng.standard_normal((2, D))
    student = features([np.zeros((2, 1, 1, 1))], e_s)
    student.embedding.requires_grad_(True)
    terms = method(student, features([np.zeros((2, 1, 1, 1))], e_t), torch.tensor(target), torch.tensor(index), 0)
    valid = np.array([[False, True, True], [True, False, True]])
    v_s, v_t = l2n(e_s), l2n(e_t)
    expected = shared_reference(v_s, mem_t, index, neg, valid, N) + shared_reference(v_t, mem_s, index, neg, valid, N)
    assert terms["crd"].item() == pytest.approx(expected, rel=1e-5)
    terms["crd"].backward()  # after the in-place bank update
    assert student.embedding.grad.abs().sum() > 0
    new_s = mem_s.copy()
    new_s[index] = l2n(MOMENTUM * mem_s[index] + (1 - MOMENTUM) * v_s)
    np.testing.assert_allclose(method.memory_student.numpy(), new_s, rtol=1e-5, atol=1e-6)


def test_shared_negatives_are_uniform_and_per_sample_ones_the_default():
    torch.manual_seed(0)
    method = make_crd(num_samples=400, num_negatives=256, shared_negatives=True)
    method.labels.copy_(torch.arange(400) % 4)
    index = torch.arange(0, 64)
    neg, valid = method.shared_indices(index, index % 4)
    assert neg.shape == (256,) and neg.min() >= 0 and neg.max() < 400
    assert torch.equal(valid, (neg[None] != index[:, None]) & (method.labels[neg][None] != (index % 4)[:, None]))
    assert 0.70 < valid.float().mean() < 0.80  # a quarter of the draws share the anchor's class
    assert make_crd().shared_negatives is False
    with pytest.raises(ValueError, match="shared_negatives must be true or false, got 'yes'"):
        make_crd(shared_negatives="yes")


def test_negatives_are_clamped_to_the_data_set_with_a_note(caplog):
    with caplog.at_level(logging.WARNING, logger="kdexp.distill.crd"):
        method = make_crd(num_samples=10, num_negatives=16384)
    assert method.k == 9
    assert "clamped from 16384 to 9" in caplog.text


def test_distributed_update_gathers_from_every_process(tmp_path):
    if not dist.is_available():
        pytest.skip("torch.distributed unavailable")
    torch.manual_seed(0)
    local = make_crd()
    torch.manual_seed(0)
    ddp = make_crd()
    ddp.load_state_dict(local.state_dict())
    args = (
        features([np.zeros((2, 1, 1, 1))], rng.standard_normal((2, D))),
        features([np.zeros((2, 1, 1, 1))], rng.standard_normal((2, D))),
        torch.tensor([0, 1]),
        torch.tensor([2, 5]),
        0,
    )
    torch.manual_seed(1)
    expected = local(*args)["crd"]
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        torch.manual_seed(1)
        got = ddp(*args)["crd"]
    finally:
        dist.destroy_process_group()
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)
    assert torch.equal(ddp.memory_student, local.memory_student) and torch.equal(ddp.labels, local.labels)


def _two_rank_update(rank: int, store: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        torch.manual_seed(0)
        method = make_crd(num_samples=8)  # same initial banks on both ranks
        sizes = (3, 1)  # uneven last batches, as a DistributedSampler may give
        index = torch.tensor([[0, 3, 5], [6]][rank])
        v = torch.nn.functional.normalize(torch.full((sizes[rank], D), float(rank + 1)), dim=1)
        method._update(index, index % 3, v, v)
        torch.save({"memory": method.memory_student, "labels": method.labels}, f"{out}{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_distributed_update_with_two_processes_and_uneven_batches(tmp_path):
    import torch.multiprocessing as mp

    if not dist.is_available() or "fork" not in mp.get_all_start_methods():
        pytest.skip("needs torch.distributed and the fork start method")
    # fork: no re-import of torch in the children (spawn costs seconds)
    mp.start_processes(
        _two_rank_update,
        args=(str(tmp_path / "store"), str(tmp_path / "rank")),
        nprocs=2,
        start_method="fork",
    )
    a, b = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    assert torch.equal(a["memory"], b["memory"]) and torch.equal(a["labels"], b["labels"])
    assert a["labels"].tolist() == [0, -1, -1, 0, -1, 2, 0, -1]  # both ranks' samples recorded
