"""Smoke tests of the benchmark's building blocks and of the speed options: structure and sanity only,
never timings (the machine is shared; figures live in benchmarks/README.md)."""

from __future__ import annotations

import math

import pytest
import torch

from benchmarks.common import interleaved, md_table
from benchmarks.data_path import PerSampleFashion, drain, per_sample_loader
from benchmarks.kd_epoch import MODES, ManualOptimization, cached_logits, kdexp_run, plain_run
from benchmarks.loop_overhead import framework_overhead, report, sweep
from kdexp.data import TensorBatchLoader, create_datamodule
from kdexp.models import create_model
from kdexp.modules.distill import DistillModule
from kdexp.training.trainer import fit
from tests.caching.test_teacher_outputs import context, models, synthetic


@pytest.fixture(scope="module")
def small():
    dm = create_datamodule("synthetic", num_samples=300, num_test=50, image_size=8, in_channels=1, batch_size=64,
                           seed=0, eval_batch_size=256)
    dm.setup()
    teacher = create_model("cnn_small", num_classes=10, in_channels=1).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return dm, teacher


def test_kdexp_and_plain_runs_cover_every_teacher_mode(small, tmp_path):
    dm, teacher = small
    logits = cached_logits(dm, teacher, tmp_path)
    assert logits.logits.shape == (dm.num_train, 10)
    for mode in MODES:
        for acc in (kdexp_run(dm, teacher, mode, 1, tmp_path), plain_run(dm, teacher, mode, 1, logits)):
            assert 0.0 <= acc <= 1.0
    assert 0.0 <= kdexp_run(dm, teacher, "cached", 1, tmp_path, module_cls=ManualOptimization) <= 1.0
    assert len(list((tmp_path / "teacher_outputs").glob("*.pt"))) == 1  # filled once, then reused


def test_sections_and_report_on_a_few_batches(small, tmp_path):
    dm, teacher = small
    results = {"machine": {"cpu": "x", "cores": 2, "torch": "t", "torch_threads": 2}, "load_before": "0 0 0",
               "load_after": "0 0 0", "command": "test", "total_s": 1.0,
               "framework_overhead": framework_overhead(dm, teacher, 1, 1, tmp_path, manual=False),
               "sweeps": {"cnn_small": sweep(dm, teacher, 2, 1)}}
    summary = results["framework_overhead"]["summary"]
    assert {"kdexp/plain none", "kdexp/plain online", "kdexp/plain cached", "kdexp cached / kdexp none"} <= set(summary)
    assert all(v > 0 for k, v in summary.items() if "share" not in k)  # a share may dip below 0 in noise
    sw = results["sweeps"]["cnn_small"]
    assert sw["speedup"] > 0 and len(sw["online_trial_s"]) == len(sw["cached_trial_s"]) == 2
    text = report(results)
    assert "### Framework overhead" in text and "### Sweep" in text and "| kdexp cached |" in text


def test_interleaved_reports_every_case_and_repeat():
    calls = []
    res = interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, 3)
    assert calls == ["a", "b", "b", "a", "a", "b"]  # alternating order
    assert set(res) == {"a", "b"} and all(len(r["wall_s"]) == 3 and r["wall_median_s"] >= 0 for r in res.values())
    assert md_table(["x", "y"], [["a", 1.5]]).count("\n") == 2


def test_per_sample_pipeline_yields_the_same_normalized_images(small):
    dm, _ = small
    x, y = dm.split_tensors("train")
    loader = per_sample_loader(dm, augment=False)
    assert isinstance(dm.train_dataloader(), TensorBatchLoader)  # kdexp's path: no DataLoader, no workers
    assert drain(loader) == dm.num_train
    raw = (x * dm.std[0] + dm.mean[0]).mul(255).round().clamp(0, 255).to(torch.uint8)
    sample, label = PerSampleFashion(raw, y, dm.mean[0], dm.std[0])[3]
    assert label == int(y[3]) and sample.shape == x[3].shape
    cropped, _ = PerSampleFashion(raw, y, dm.mean[0], dm.std[0], crop=2)[3]
    assert cropped.shape == x[3].shape


@pytest.mark.parametrize("options", [{"precision": "bf16-mixed"}, {"channels_last": True}])
def test_speed_options_train_on_cpu(options, tmp_path):
    dm = synthetic()
    for mode in ("off", "on"):
        teacher, student = models()
        module = DistillModule(student, teacher=teacher, weights={"ce": 0.5, "kd": 0.5}, max_epochs=1)
        ctx = context(dm, tmp_path, mode)
        ctx.conf["trainer"].update(options)
        fit(ctx, module, 1)
        assert math.isfinite(module.last_val_acc)
        assert all(torch.isfinite(v).all() for v in student.state_dict().values())


@pytest.mark.slow
def test_compile_trains_on_cpu_and_keeps_state_dict_keys(tmp_path):
    dm = synthetic()
    teacher, student = models()
    keys = set(student.state_dict())
    module = DistillModule(student, teacher=teacher, weights={"ce": 0.5, "kd": 0.5}, max_epochs=1)
    ctx = context(dm, tmp_path, "on")
    ctx.conf["trainer"]["compile"] = True
    fit(ctx, module, 1)
    assert math.isfinite(module.last_val_acc) and set(student.state_dict()) == keys
    assert set(module.best_student().state_dict()) == keys


def test_crd_benchmark_times_both_scoring_paths_and_restores_nothing_global(monkeypatch):
    import kdexp.distill.crd as crd
    from benchmarks.crd_scores import step_seconds

    before = crd.DENSE_FRACTION
    calls = []
    real, real_shared = crd.CRD._scores, crd.CRD._shared_scores
    monkeypatch.setattr(crd.CRD, "_scores",
                        lambda self, m, idx, v: calls.append(crd.DENSE_FRACTION) or real(self, m, idx, v))
    assert step_seconds(300, "gathered", batch=8, negatives=64, repeats=1) > 0
    assert step_seconds(300, "whole bank", batch=8, negatives=64, repeats=1) > 0
    assert set(calls) == {0, 300}  # each path was forced: never / always the whole bank
    shared = []
    monkeypatch.setattr(crd.CRD, "_shared_scores", lambda self, *a: shared.append(1) or real_shared(self, *a))
    assert step_seconds(300, "shared", batch=8, negatives=64, repeats=1) > 0
    assert shared and len(calls) == 2 * 2 * 3  # two sides, warm-up 2 + 1 timed step, per-sample paths only
    assert crd.DENSE_FRACTION == before
    with pytest.raises(ValueError, match="path='dense' is not one of: gathered, whole bank, shared"):
        step_seconds(300, "dense", batch=8, negatives=64, repeats=1)


def test_crd_benchmark_compares_two_valid_samplers():
    from benchmarks.crd_scores import sampling_seconds, whole_block_redraw
    from tests.distill.test_distill_crd import make_crd

    method = make_crd(num_samples=300, num_negatives=64)
    method.labels.copy_(torch.arange(300) % 3)
    index = torch.arange(30)
    idx = whole_block_redraw(method, index, index % 3)
    assert idx.shape == (30, 65) and torch.equal(idx[:, 0], index) and (idx[:, 1:] != index[:, None]).all()
    times = sampling_seconds(300, 64, 8, 2)
    assert set(times) == {"previous", "current"} and min(times.values()) > 0


def test_optimizer_benchmark_times_the_fused_and_the_loop_optimizer():
    import kdexp.modules.optim
    from benchmarks.optimizer_step import RECIPES, optimizer

    model = create_model("cnn_tiny", num_classes=10, in_channels=1)
    for recipe in RECIPES.values():
        assert optimizer(model, recipe, fused=True).defaults["fused"] is True
        assert not optimizer(model, recipe, fused=False).defaults["fused"]
    assert kdexp.modules.optim.fused_kernels([torch.nn.Parameter(torch.zeros(1))])  # benchmarking changed no default


def test_student_step_benchmark_trains_and_restores_global_switches():
    from benchmarks.student_step import GroupedStudents, student_step, with_threads, without_mkldnn

    threads, mkldnn = torch.get_num_threads(), torch.backends.mkldnn.enabled
    seen = []
    with_threads(1, lambda: seen.append(torch.get_num_threads()))()
    without_mkldnn(lambda: seen.append(torch.backends.mkldnn.enabled))()
    assert seen == [1, False]
    assert (torch.get_num_threads(), torch.backends.mkldnn.enabled) == (threads, mkldnn)
    grouped = GroupedStudents(3)
    before = [p.detach().clone() for p in grouped.parameters()]
    step = student_step(grouped, batch=4, copies=3)
    step()
    assert grouped(torch.randn(4, 1, 28, 28)).shape == (3, 4, 10)  # one logit set per student
    assert all(not torch.equal(a, b) for a, b in zip(before, grouped.parameters()))  # every weight trained


def test_feature_cache_benchmark_runs_both_modes_and_sizes_the_kept_levels(small, tmp_path):
    from benchmarks.feature_cache import epoch_case, sizes_gb, student_and_method

    dm, teacher = small
    for mode in ("online", "cached"):  # each case asserts that it ran in its mode
        epoch_case(dm, teacher, "cnn_tiny", "reviewkd", mode, tmp_path)()
    assert len(list((tmp_path / "teacher_outputs").glob("*.pt"))) == 1
    _, method = student_and_method(dm, teacher, "cnn_tiny", "ab")
    every, kept = sizes_gb(dm, teacher, method)
    assert 0 < kept < every


def test_fashion_full_estimate_times_every_method_of_the_plan_as_the_pipeline_builds_it():
    from omegaconf import OmegaConf

    from benchmarks.fashion_full_estimate import MATRIX, distill_node, method_seconds, method_step_ms, trial_seconds

    plan = OmegaConf.to_container(OmegaConf.load(MATRIX))
    overrides = plan["distill_overrides"]["*"]
    teacher = create_model("cnn_medium", num_classes=10, in_channels=1).eval()
    for method in plan["hydra"]["sweeper"]["params"]["distill"].split(","):
        node = distill_node(method, overrides)
        assert node["name"] == method
        stages = ("distill", "init") if node.get("init_epochs") else ("distill",)
        assert node.get("init_epochs", 0) in (0, 1)  # the matrix's override reached the method
        for stage in stages:
            assert 0 < method_step_ms(teacher, "cnn_tiny", node, stage, repeats=1) < 60_000, (method, stage)
        ms, epoch, init = method_seconds(teacher, "cnn_tiny", node, repeats=1)
        assert epoch > ms * 422 / 1000 and (init > 0) == bool(node.get("init_epochs"))  # 422 steps per epoch
        whole = trial_seconds(ms, epoch, init, {"epochs": 1})
        half = trial_seconds(ms, epoch, init, {"epochs": 1, "train_batches": 0.5})
        assert whole - half == pytest.approx((init + epoch) / 2 - 47 * ms / 6 / 1000 / 2)  # validation stays whole
