"""The real `kdexp-train` CLI for variant=augmented, quantized and policy on tiny budgets: MLflow runs,
lineage, the metrics each variant promises, and the teacher cache shared across runs."""

from __future__ import annotations

import pytest

from tests.e2e.test_cli import kdexp_train, runs

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
IMAGE = ["data=synthetic", "data.num_samples=300", "data.num_test=100", "data.image_size=8", "teacher=cnn_small",
         "trainer.max_epochs=2", "eval.latency_repeats=2", "eval.latency_batch=8"]
POLICY = ["variant=policy", "variant.ppo.max_steps=2048", "variant.ppo.check_every=1", "variant.states=600",
          "variant.heldout_states=200", "variant.student.epochs=2", "variant.eval_episodes=3",
          "eval.latency_repeats=2", "eval.latency_batch=8"]


@pytest.fixture(scope="module")
def done(tmp_path_factory):
    """Four runs in one folder: augmented, quantized (reusing its teacher), policy, policy with another seed."""
    cwd = tmp_path_factory.mktemp("variants")
    procs = {
        "augmented": kdexp_train(*IMAGE, "student=cnn_tiny", "variant=augmented", "variant.policy=mixup",
                                 "finetune.epochs=1", cwd=cwd),
        "quantized": kdexp_train(*IMAGE, "student=cnn_small", "variant=quantized", "finetune.epochs=1", cwd=cwd),
        "policy": kdexp_train(*POLICY, cwd=cwd),
        "policy_again": kdexp_train(*POLICY, "seed=1", "variant.teacher_seed=0", cwd=cwd),
    }
    for name, proc in procs.items():
        assert proc.returncode == 0, f"{name}: {proc.stderr[-3000:]}"
    client, all_runs = runs(cwd)
    return cwd, procs, client, all_runs


def student_run(all_runs, variant, seed="0"):
    return next(r for r in all_runs if r.data.tags.get("kdexp.variant") == variant
                and r.data.tags["kdexp.role"] == "student" and r.data.tags["seed"] == seed)


def test_augmented_run_metrics_lineage_and_finetuning(done):
    _, procs, client, all_runs = done
    run = student_run(all_runs, "augmented")
    tags, params, metrics = run.data.tags, run.data.params, run.data.metrics
    assert run.info.status == "FINISHED"
    assert tags["kdexp.augment"] == "mixup" and tags["kdexp.method"] == "kd+mixup"
    assert len(tags["kdexp.settings"]) == 20  # a table of variant runs can be checked for mixed settings too
    teacher = next(r for r in all_runs
                   if r.data.tags["kdexp.role"] == "teacher" and r.data.tags.get("arch") == "cnn_small")
    assert tags["kdexp.teacher_run_id"] == teacher.info.run_id and tags["kdexp.baseline_run_id"]
    assert params["variant.policy"] == "mixup" and params["distill.weights.ce"] == "0.0"  # KD only, as trained
    assert params["teacher_cache.mode"] == "off"  # the teacher ran online on the mixed inputs
    for key in ("student/test_top1", "teacher/test_top1", "baseline/test_top1", "student/agreement",
                "student/pre_finetune/test_top1", "student/latency_b1_ms", "student/size_bytes"):
        assert key in metrics, key
    assert len(client.get_metric_history(run.info.run_id, "train/kd")) == 2
    assert len(client.get_metric_history(run.info.run_id, "finetune/train/ce")) == 1
    assert "student cnn_tiny (kd+mixup)" in procs["augmented"].stdout


def test_quantized_run_reports_the_int8_model_next_to_its_float_version(done):
    _, procs, client, all_runs = done
    run = student_run(all_runs, "quantized")
    m = run.data.metrics
    assert run.info.status == "FINISHED" and run.data.tags["kdexp.method"] == "kd+qat_int8"
    assert "reusing cached teacher cnn_small" in procs["quantized"].stderr + procs["quantized"].stdout
    for key in ("student/test_top1", "student/float/test_top1", "student/fake_quant/test_top1", "baseline/test_top1",
                "student/best_val/test_top1", "student/pre_finetune/test_top1", "student/latency_b1_ms",
                "student/float/latency_b1_ms"):
        assert key in m, key
    # int8 weights: about a quarter of the float student (same architecture as the teacher here)
    assert m["student/int8_size_ratio"] < 0.35 and m["student/size_bytes"] < 0.35 * m["teacher/size_bytes"]
    assert m["student/size_bytes"] == pytest.approx(m["student/int8_size_ratio"] * m["student/float/size_bytes"])
    names = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"student.pt", "metrics.json", "summary.md", "config.yaml"} <= names
    assert run.data.tags["kdexp.teacher_run_id"] and run.data.tags["kdexp.baseline_run_id"]
    assert "(kd+qat_int8)" in procs["quantized"].stdout


def test_quantized_artifact_holds_int8_weights(done):
    import torch

    _, _, client, all_runs = done
    run = student_run(all_runs, "quantized")
    path = client.download_artifacts(run.info.run_id, "student.pt")
    state = torch.load(path, weights_only=False)
    assert state["model.stem.0.weight"].dtype == torch.qint8


def test_policy_runs_teacher_cache_lineage_and_returns(done):
    _, procs, client, all_runs = done
    teachers = [r for r in all_runs
                if r.data.tags.get("kdexp.variant") == "policy" and r.data.tags["kdexp.role"] == "teacher"]
    assert len(teachers) == 1  # the second student reused the cached teacher
    assert "reusing cached policy teacher" in procs["policy_again"].stderr + procs["policy_again"].stdout
    assert client.get_metric_history(teachers[0].info.run_id, "train/episode_return")
    for seed in ("0", "1"):
        run = student_run(all_runs, "policy", seed)
        m, tags, params = run.data.metrics, run.data.tags, run.data.params
        assert run.info.status == "FINISHED" and tags["kdexp.teacher_run_id"] == teachers[0].info.run_id
        assert tags["env"] == "CartPole-v1" and tags["student"] == "policy_mlp_16"
        for key in ("student/test_return_mean", "student/test_return_std", "teacher/test_return_mean",
                    "student/agreement", "student/kl_teacher", "student/params_ratio"):
            assert key in m, key
        assert 0 <= m["student/agreement"] <= 1 and m["teacher/test_return_mean"] >= 8  # CartPole's shortest episode
        assert "variant.env" in params and "data.name" not in params  # the image groups are ignored
        assert len(client.get_metric_history(run.info.run_id, "heldout/agreement")) == 2
    assert "| student policy_mlp_16 |" in procs["policy"].stdout
