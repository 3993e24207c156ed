"""Cached teacher outputs: the same losses as the online teacher, keys that change with everything the
outputs depend on, atomic and locked writes, and deterministic augmented views."""

from __future__ import annotations

import copy
import time

import pytest
import torch

from kdexp.caching.fingerprint import fingerprint
from kdexp.caching.teacher_outputs import (
    TeacherCacheSettings,
    TeacherOutputCache,
    TeacherOutputs,
    augmented_views,
    cache_spec,
    compute_outputs,
    estimated_bytes,
    prepare_cached_teacher,
    wanted_outputs,
)
from kdexp.data import TensorBatchLoader, create_datamodule
from kdexp.distill import METHODS, IncompatiblePairError, create_method, list_methods
from kdexp.models import create_model
from kdexp.modules.distill import DistillModule
from kdexp.training.context import Context
from kdexp.training.run import RunIdentity
from kdexp.training.trainer import fit
from tests.conftest import exit_codes_of_concurrent


def synthetic(**kw):
    dm = create_datamodule("synthetic", num_samples=200, num_test=40, image_size=8, batch_size=32, seed=0, **kw)
    dm.setup()
    return dm


@pytest.fixture(scope="module")
def dm():
    return synthetic()


def models(seed=0):
    torch.manual_seed(seed)
    teacher = create_model("cnn_small", num_classes=10, in_channels=3)
    return teacher, create_model("cnn_tiny", num_classes=10, in_channels=3)


def key_of(teacher, dm, outputs=("logits",), views=0, seed=0):
    return fingerprint(cache_spec(teacher, dm, outputs, views, seed))


@pytest.mark.parametrize("name", [m for m in list_methods() if not METHODS.get(m).transformer_only])
def test_every_method_gets_the_same_loss_from_cached_and_online_teacher(name, dm):
    teacher, student = models()
    method = create_method(name)
    try:
        method.build(student.feature_shapes(dm.input_shape), teacher.feature_shapes(dm.input_shape), 10, dm.num_train)
    except IncompatiblePairError:  # FSP needs equal channels: distill into the teacher's architecture
        student = create_model("cnn_small", num_classes=10, in_channels=3)
        method.build(student.feature_shapes(dm.input_shape), teacher.feature_shapes(dm.input_shape), 10, dm.num_train)
    weights = {"ce": 1.0, "kd": 1.0, **{term: 1.0 for term in method.terms}}
    stages = ["distill"] + (["init"] if method.init_epochs > 0 else [])
    for stage in stages:
        online = DistillModule(student, teacher=teacher, method=copy.deepcopy(method), weights=weights, stage=stage)
        cached = DistillModule(student, teacher=teacher, method=copy.deepcopy(method), weights=weights, stage=stage)
        x_train, _ = dm.split_tensors("train")
        levels = method.teacher_levels()  # only what the method says it reads: a wrong claim fails here
        outputs = wanted_outputs(method.needs, online.needs_features, levels)
        cached.use_teacher_outputs(compute_outputs(teacher, x_train, outputs, dm.num_train, levels=levels))
        student.eval()
        x, y, index = next(iter(dm.loader("train", shuffle=True)))
        torch.manual_seed(1)  # methods that sample (CRD negatives) draw the same numbers
        expected, _ = online.loss_terms(x, y, index)
        torch.manual_seed(1)
        got, _ = cached.loss_terms(x, y, index)
        assert set(got) == set(expected) and expected
        for term in expected:
            assert torch.allclose(got[term], expected[term], rtol=1e-5, atol=1e-6), (stage, term)


@pytest.mark.parametrize("name", ["ab", "reviewkd", "at", "vid", "nst", "ofd", "fitnet"])
def test_methods_pairing_deep_stages_keep_only_their_teacher_levels(name, dm):
    teacher, student = models()
    method = create_method(name)
    method.build(student.feature_shapes(dm.input_shape), teacher.feature_shapes(dm.input_shape), 10, dm.num_train)
    levels = method.teacher_levels()
    needs_features = bool(method.needs - {"logits", "index"})
    x, _ = dm.split_tensors("train")
    every = compute_outputs(teacher, x, wanted_outputs(method.needs, needs_features), dm.num_train)
    outputs = wanted_outputs(method.needs, needs_features, levels)
    kept = compute_outputs(teacher, x, outputs, dm.num_train, levels=levels)
    assert kept.nbytes < every.nbytes  # the stem's map, the largest, is never paired
    assert kept.nbytes == estimated_bytes(teacher, dm, outputs, dm.num_train, levels)
    for name_, chosen in levels.items():
        for i, t in enumerate(getattr(kept, name_)):
            assert (t is not None) == (i in chosen), (name_, i)
            if t is not None:
                assert torch.equal(t, getattr(every, name_)[i])


def test_levels_out_of_range_are_named(dm):
    teacher, _ = models()
    with pytest.raises(ValueError, match=r"preact=\[7\] out of range: the teacher has 3 \(0..2\)"):
        compute_outputs(teacher, dm.split_tensors("train")[0][:4], ("logits", "preact"), 4, levels={"preact": (1, 7)})


def test_cached_logits_equal_the_teacher_forward(dm):
    teacher, _ = models()
    teacher.eval()
    x, _ = dm.split_tensors("train")
    outputs = compute_outputs(teacher, x, ("logits",), dm.num_train)
    index = torch.tensor([5, 0, dm.num_train - 1, 17])
    with torch.no_grad():
        assert torch.allclose(outputs.lookup(index).logits, teacher(x[index]), rtol=1e-5, atol=1e-6)


def context(dm, tmp_path, mode="auto", views=0):
    conf = {
        "trainer": {"accelerator": "cpu", "devices": 1, "enable_progress_bar": False, "enable_model_summary": False,
                    "num_sanity_val_steps": 0, "logger": None, "compile": False, "channels_last": False},
        "teacher_cache": {"mode": mode, "views": views},
        "paths": {"cache": str(tmp_path / "cache")},
    }
    del conf["trainer"]["logger"]
    return Context(RunIdentity(conf, None, None, tmp_path), dm)


def test_training_with_cached_teacher_matches_online_training(dm, tmp_path):
    finals = {}
    for mode in ("off", "on"):
        teacher, student = models()
        torch.manual_seed(3)
        module = DistillModule(student, teacher=teacher, weights={"ce": 0.5, "kd": 0.5}, max_epochs=2)
        fit(context(dm, tmp_path, mode), module, 2)
        assert (module.teacher_store is not None) == (mode == "on")
        finals[mode] = student.state_dict()
    for k, v in finals["off"].items():
        assert torch.allclose(v.float(), finals["on"][k].float(), rtol=1e-4, atol=1e-5), k
    assert len(list((tmp_path / "cache" / "teacher_outputs").glob("*.pt"))) == 1


def test_key_changes_with_teacher_weights_data_outputs_and_views(dm):
    teacher, _ = models()
    key = key_of(teacher, dm)
    assert key == key_of(copy.deepcopy(teacher), synthetic())  # same weights, a fresh copy of the same data
    changed = copy.deepcopy(teacher)
    with torch.no_grad():
        next(changed.parameters())[0].add_(1e-3)
    assert key_of(changed, dm) != key
    bn = copy.deepcopy(teacher)
    next(b for n, b in bn.named_buffers() if "running_mean" in n).add_(1.0)  # buffers count too
    assert key_of(bn, dm) != key
    assert key_of(teacher, synthetic(limit=100)) != key
    assert key_of(teacher, synthetic(split_seed=1)) != key
    assert key_of(teacher, synthetic(data_seed=1)) != key  # other content
    assert key_of(teacher, dm, ("logits", "embedding")) != key
    whole = fingerprint(cache_spec(teacher, dm, ("logits", "preact"), 0, 0))
    assert whole == fingerprint(cache_spec(teacher, dm, ("logits", "preact"), 0, 0, {"stages": (1,)}))  # not kept
    assert whole != fingerprint(cache_spec(teacher, dm, ("logits", "preact"), 0, 0, {"preact": (2, 3)}))
    aug = synthetic(augment=True)
    assert key_of(teacher, aug, views=2) != key_of(teacher, aug, views=3) != key_of(teacher, aug, views=3, seed=1)


def test_fill_once_then_reuse_and_no_temp_files(tmp_path):
    cache, calls = TeacherOutputCache(tmp_path), []

    def compute():
        calls.append(1)
        return TeacherOutputs(torch.randn(8, 3), [], [], None, 8)

    first, filled = cache.get_or_compute("k", compute, {"what": "test"})
    again, refilled = cache.get_or_compute("k", compute, {"what": "test"})
    assert (filled, refilled, len(calls)) == (True, False, 1)
    assert torch.equal(first.logits, again.logits)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k.lock", "k.pt"]


def test_failed_write_leaves_no_entry(tmp_path, monkeypatch):
    cache = TeacherOutputCache(tmp_path)

    def broken_save(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError):
        cache.get_or_compute("k", lambda: TeacherOutputs(torch.zeros(2, 2), [], [], None, 2), {})
    assert cache.load("k") is None and not [p for p in tmp_path.iterdir() if p.suffix != ".lock"]


def test_unreadable_entry_is_recomputed(tmp_path):
    cache = TeacherOutputCache(tmp_path)
    cache.path("k").write_bytes(b"truncated")
    outputs, filled = cache.get_or_compute("k", lambda: TeacherOutputs(torch.ones(2, 2), [], [], None, 2), {})
    assert filled and torch.equal(cache.load("k").logits, torch.ones(2, 2))


def _slow_fill(root, log_path):
    def compute():
        with open(log_path, "a") as f:
            f.write("filled\n")
        time.sleep(1.0)  # the other process arrives while we fill
        return TeacherOutputs(torch.ones(4, 2), [], [], None, 4)

    TeacherOutputCache(root).get_or_compute("shared", compute, {})


def test_two_processes_fill_once(tmp_path):
    log = tmp_path / "log.txt"
    assert exit_codes_of_concurrent(_slow_fill, (str(tmp_path / "cache"), str(log))) == [0, 0]
    assert log.read_text().count("filled") == 1


def test_views_are_deterministic_and_rows_match_their_teacher_outputs():
    dm = synthetic(augment=True)
    x, y = dm.split_tensors("train")
    views = augmented_views(dm, 3, seed=0)
    assert views.shape == (3 * len(x), *x.shape[1:])
    assert torch.equal(views, augmented_views(synthetic(augment=True), 3, seed=0))
    assert not torch.equal(views, augmented_views(dm, 3, seed=1))
    assert not torch.equal(views[: len(x)], views[len(x) : 2 * len(x)])  # the views differ from each other
    teacher, _ = models()
    outputs = compute_outputs(teacher, views, ("logits",), len(x), views=3)
    loader = TensorBatchLoader(views, y, 32, shuffle=True, seed=0, views=3)
    plain_order = torch.cat([i for _, _, i in dm.loader("train", shuffle=True)])
    epochs = []
    for _ in range(2):
        rows = []
        for xb, yb, row in loader:
            index = outputs.sample_index(row)
            assert torch.equal(xb, views[row]) and torch.equal(yb, y[index])
            with torch.no_grad():
                assert torch.allclose(outputs.lookup(row).logits, teacher.eval()(xb), rtol=1e-5, atol=1e-6)
            rows.append(row)
        rows = torch.cat(rows)
        epochs.append(rows)
        assert sorted(outputs.sample_index(rows).tolist()) == list(range(len(x)))  # every sample once an epoch
    assert torch.equal(outputs.sample_index(epochs[0]), plain_order)  # same shuffle as without views
    assert not torch.equal(epochs[0] // len(x), epochs[1] // len(x))  # another view per sample next epoch


def test_modes(tmp_path):
    teacher, _ = models()
    needs, root = frozenset({"logits"}), tmp_path
    plain, aug = synthetic(), synthetic(augment=True)
    assert prepare_cached_teacher({"mode": "off"}, plain, teacher, needs, False, root) is None
    assert prepare_cached_teacher({"mode": "auto"}, aug, teacher, needs, False, root) is None  # online
    with pytest.raises(ValueError, match="teacher_cache.mode=on needs deterministic inputs"):
        prepare_cached_teacher({"mode": "on"}, aug, teacher, needs, False, root)
    assert prepare_cached_teacher({"mode": "auto", "max_gb": 1e-9}, plain, teacher, needs, False, root) is None
    cached = prepare_cached_teacher({"mode": "auto"}, plain, teacher, needs, False, root)
    assert cached is not None and cached.train_loader is None and cached.outputs.logits.shape == (plain.num_train, 10)
    viewed = prepare_cached_teacher({"mode": "auto", "views": 2}, aug, teacher, needs, False, root)
    assert viewed.train_loader.views == 2 and viewed.outputs.logits.shape == (2 * aug.num_train, 10)


@pytest.mark.parametrize("node, match", [
    ({"mode": "always"}, "teacher_cache.mode='always'"), ({"views": -1}, "teacher_cache.views=-1"),
    ({"max_gb": 0}, "teacher_cache.max_gb=0"), ({"view": 2}, "unknown keys"),
])
def test_bad_settings_are_named(node, match):
    with pytest.raises(ValueError, match=match):
        TeacherCacheSettings.from_conf(node)


def test_evaluations_of_an_unchanged_model_are_reused(dm, tmp_path, monkeypatch):
    import kdexp.training.evaluation as stages

    calls = []
    predict = stages.predict_logits
    monkeypatch.setattr(stages, "predict_logits", lambda *a, **k: calls.append(1) or predict(*a, **k))
    teacher, _ = models(seed=5)
    ctx = context(dm, tmp_path)
    ctx.conf.update(eval={"ece_bins": 15, "latency_batch": 4, "latency_repeats": 2}, data={"eval_batch_size": 64})
    first = stages.evaluate(ctx, teacher, "teacher", costs=False)
    stages._EVALUATIONS.clear()  # a new process: the test logits come from the cache file
    second = stages.evaluate(ctx, teacher, "teacher", costs=False)
    third = stages.evaluate(ctx, teacher, "teacher", costs=False)  # in-process memo
    assert first == second == third and len(calls) == 1
    with torch.no_grad():
        next(teacher.parameters()).add_(0.1)
    stages.evaluate(ctx, teacher, "teacher", costs=False)
    assert len(calls) == 2  # changed weights: evaluated again
    x, _ = dm.split_tensors("test")
    assert torch.equal(ctx.test["teacher"], predict(teacher, x, 64))


def test_impossible_mode_on_fails_when_the_experiment_is_set_up(tmp_path):
    aug = synthetic(augment=True)
    conf = {"data": {"augment": True}, "teacher_cache": {"mode": "on"}, "trainer": {},
            "paths": {"cache": str(tmp_path)}}
    with pytest.raises(ValueError, match="teacher_cache.mode=on needs deterministic inputs"):
        Context(RunIdentity(conf, None, None, tmp_path), aug)
    views = {**conf, "teacher_cache": {"mode": "on", "views": 2}}
    Context(RunIdentity(views, None, None, tmp_path), aug)  # views make it possible
