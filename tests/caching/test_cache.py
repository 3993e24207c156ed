"""The trained-model cache: fingerprints, train-once under concurrency, no half-written entries."""

from __future__ import annotations

import multiprocessing as mp
import time

import pytest
import torch

from kdexp.caching.fingerprint import fingerprint
from kdexp.caching.models import ModelCache, load_weights
from kdexp.models import create_model
from tests.conftest import exit_codes_of_concurrent


def test_fingerprint_is_stable_and_sensitive():
    spec = {"arch": "resnet8", "data": {"name": "digits", "limit": None}, "seed": 0}
    assert fingerprint(spec) == fingerprint({"seed": 0, "data": {"limit": None, "name": "digits"}, "arch": "resnet8"})
    assert fingerprint(spec) != fingerprint({**spec, "seed": 1})
    assert fingerprint(spec) != fingerprint({**spec, "data": {"name": "digits", "limit": 100}})


def test_get_or_create_trains_once(tmp_path):
    cache, calls = ModelCache(tmp_path), []

    def create():
        calls.append(1)
        return torch.nn.Linear(2, 2), {"run_id": "abc"}

    first, fresh = cache.get_or_create("k", create)
    second, again = cache.get_or_create("k", create)
    assert len(calls) == 1 and fresh is not None and again is None
    assert second.meta == {"run_id": "abc"} and second.weights.is_file()


def test_failed_creation_leaves_no_entry(tmp_path):
    cache = ModelCache(tmp_path)

    def crash():
        raise RuntimeError("killed mid-training")

    with pytest.raises(RuntimeError):
        cache.get_or_create("k", crash)
    assert cache.lookup("k") is None
    assert not [p for p in tmp_path.iterdir() if p.is_dir()]  # no temp or partial folders


def test_store_is_atomic_when_saving_fails(tmp_path, monkeypatch):
    cache = ModelCache(tmp_path)

    def broken_save(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError):
        cache.store("k", torch.nn.Linear(2, 2), {})
    assert cache.lookup("k") is None and not [p for p in tmp_path.iterdir() if p.is_dir()]


def _worker(root, log_path):
    def create():
        with open(log_path, "a") as f:
            f.write("trained\n")
        time.sleep(1.0)  # long enough that the other process arrives while we train
        return torch.nn.Linear(2, 2), {"pid": mp.current_process().pid}

    ModelCache(root).get_or_create("shared", create)


def test_two_processes_started_at_once_train_once(tmp_path):
    log = tmp_path / "log.txt"
    assert exit_codes_of_concurrent(_worker, (str(tmp_path / "cache"), str(log)), timeout=60) == [0, 0]
    assert log.read_text().count("trained") == 1


def test_load_weights_rejects_other_architecture_and_class_count(tmp_path):
    path = tmp_path / "w.pt"
    torch.save(create_model("cnn_tiny", num_classes=10, in_channels=1).state_dict(), path)
    load_weights(create_model("cnn_tiny", num_classes=10, in_channels=1), path, "teacher.ckpt")
    with pytest.raises(ValueError, match=r"teacher.ckpt: checkpoint .* does not fit this model: "
                       r"tensor 'classifier.weight' has shape \(10, 32\), the model's \(5, 32\)"):
        load_weights(create_model("cnn_tiny", num_classes=5, in_channels=1), path, "teacher.ckpt")
    with pytest.raises(ValueError, match=r"does not fit this model: tensor #\d+ .* does not match the model's"):
        load_weights(create_model("cnn_small", num_classes=10, in_channels=1), path, "teacher.ckpt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable weights file"):
        load_weights(create_model("cnn_tiny"), tmp_path / "junk.pt", "teacher.ckpt")


def test_load_weights_is_weights_only(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("code ran",))

    path = tmp_path / "evil.pt"
    torch.save({"x": Evil()}, path)
    with pytest.raises(ValueError, match="not a readable weights file"):
        load_weights(create_model("cnn_tiny"), path, "teacher.ckpt")
