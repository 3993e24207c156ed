"""Multi-model variants through the real `kdexp-train` on tiny data: chain, born-again, mutual learning and an
ensemble teacher; lineage in MLflow, every link trained once, a re-run that trains nothing, fine-tuning.

Three processes in all (a multirun covers three variants in one): the whole module stays well under 90 s.
"""

from __future__ import annotations

import re

import pytest

from tests.e2e.test_cli import kdexp_train

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
# No MLflow Models or student exports: the tests read tags, metrics and logs, and the first run's 10 trained models
# would each be logged (CI time); test_cli checks those records.
TINY = ["data=synthetic", "data.num_samples=300", "data.num_test=100", "data.image_size=8", "teacher=cnn_small",
        "student=cnn_tiny", "trainer.max_epochs=1", "eval.latency_repeats=2", "eval.latency_batch=8",
        "tracking.log_model=false", "tracking.export_student=false"]
# conf/variant defaults: chain cnn_small -> [cnn_small] -> cnn_tiny, born_again 3 generations, mutual 2 x cnn_tiny
VARIANTS = ["-m", "variant=chain,born_again,mutual", "finetune.epochs=1"]
ENSEMBLE = ["variant=ensemble", "teacher.members=[cnn_small,cnn_tiny,cnn_tiny]", "teacher.combine=mean_probs",
            "teacher.weights=[2,1,1]", "finetune.epochs=1"]


def runs_by_role(cwd):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{cwd / 'outputs' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("kdexp")
    roles: dict[str, list] = {}
    for run in client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"]):
        roles.setdefault(run.data.tags["kdexp.role"], []).append(run)
    return client, roles


def of_variant(runs: list, variant: str) -> list:
    return [r for r in runs if r.data.tags.get("kdexp.variant") == variant]


def ok(proc):
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def variant_runs(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("variants")
    first = ok(kdexp_train(*VARIANTS, *TINY, cwd=cwd))
    _, before = runs_by_role(cwd)
    rerun = ok(kdexp_train("-m", "variant=chain,born_again", *TINY, "finetune.epochs=1", cwd=cwd))
    _, after_rerun = runs_by_role(cwd)
    ensemble = ok(kdexp_train(*ENSEMBLE, *TINY, cwd=cwd))
    return cwd, first, before, rerun, after_rerun, ensemble


def test_chain_links_and_lineage(variant_runs):
    cwd, _, roles, *_ = variant_runs
    teacher = roles["teacher"][0]
    link1, link2 = of_variant(roles["link"], "chain")
    student = of_variant(roles["student"], "chain")[0]
    assert link1.data.tags["kdexp.teacher_run_id"] == teacher.info.run_id
    assert link2.data.tags["kdexp.teacher_run_id"] == link1.info.run_id
    assert link2.data.tags["kdexp.teacher_fingerprint"] == link1.data.tags["kdexp.fingerprint"]
    tags, m = student.data.tags, student.data.metrics
    assert tags["kdexp.teacher_run_id"] == link1.info.run_id and tags["kdexp.link_run_id"] == link2.info.run_id
    assert tags["kdexp.root_teacher_run_id"] == teacher.info.run_id
    assert tags["kdexp.chain"] == "cnn_small->cnn_small->cnn_tiny"
    assert (tags["distill"], tags["kdexp.method"], tags["teacher"], tags["student"]) == (
        "kd", "kd+chain", "cnn_small", "cnn_tiny")
    assert tags["kdexp.baseline_run_id"] == roles["baseline"][0].info.run_id
    for key in ("student/test_top1", "teacher/test_top1", "baseline/test_top1", "assistant1/test_top1",
                "student/agreement", "student/pre_finetune/test_top1", "student/best_val/test_top1"):
        assert key in m, key
    assert student.info.status == "FINISHED" and "val/acc" in link2.data.metrics


def test_born_again_generations(variant_runs):
    _, first, roles, *_ = variant_runs
    gens = of_variant(roles["link"], "born_again")
    assert [g.data.tags["kdexp.generation"] for g in gens] == ["1", "2", "3"]
    baseline = roles["baseline"][0]  # generation 0 is the cached vanilla model
    assert [g.data.tags["kdexp.teacher_run_id"] for g in gens] == [baseline.info.run_id, gens[0].info.run_id,
                                                                   gens[1].info.run_id]
    student = of_variant(roles["student"], "born_again")[0]
    m = student.data.metrics
    assert student.data.tags["kdexp.teacher_run_id"] == gens[1].info.run_id
    assert student.data.tags["kdexp.link_run_id"] == gens[2].info.run_id
    assert m["teacher/test_top1"] == m["gen0/test_top1"] == m["baseline/test_top1"]
    assert m["student/pre_finetune/test_top1"] == m["gen3/test_top1"]
    assert all(f"gen{k}/test_top1" in m for k in range(4)) and "ensemble/test_top1" in m
    assert "generation 3" in first and "ensemble of generations 1..3" in first


def test_mutual_learning_reports_peers_without_a_teacher(variant_runs):
    _, _, roles, *_ = variant_runs
    student = of_variant(roles["student"], "mutual")[0]
    m, tags = student.data.metrics, student.data.tags
    assert not any(k.startswith("teacher/") for k in m) and "student/agreement" not in m
    assert {"peer0/test_top1", "peer1/test_top1", "ensemble/test_top1", "baseline/test_top1"} <= set(m)
    chosen = int(m["student/peer_index"])
    assert m["student/pre_finetune/test_top1"] == m[f"peer{chosen}/test_top1"]
    assert {"val/acc_0", "val/acc_1", "train/kl_0", "finetune/train/loss"} <= set(m)  # per-epoch curves
    assert (tags["distill"], tags["kdexp.method"], tags["teacher"]) == ("dml", "dml", "none")
    assert not of_variant(roles.get("link", []), "mutual")


def test_every_link_trained_once_and_a_rerun_trains_nothing(variant_runs):
    _, first, before, rerun, after, _ = variant_runs
    counts = lambda roles: {role: len(runs) for role, runs in roles.items()}  # noqa: E731
    assert counts(before) == {"teacher": 1, "baseline": 1, "link": 5, "student": 3}
    assert counts(after) == {**counts(before), "student": 5}  # two new report runs, nothing trained
    assert first.count("training link") == 2 and first.count("training gen") == 3
    assert not re.search(r"training (teacher|baseline|link|gen)", rerun)
    assert rerun.count("reusing cached link") == 2 and rerun.count("reusing cached gen") == 3


def test_ensemble_members_are_cached_teachers(variant_runs):
    cwd, _, _, _, before, log = variant_runs
    _, roles = runs_by_role(cwd)
    new_teachers = [r for r in roles["teacher"] if r.info.run_id not in {t.info.run_id for t in before["teacher"]}]
    assert len(new_teachers) == 1 and new_teachers[0].data.tags["seed"] == "1"  # the second cnn_tiny
    assert log.count("reusing cached teacher cnn_") == 2  # cnn_small (the chain's teacher), cnn_tiny seed 0 (baseline)
    student = of_variant(roles["student"], "ensemble")[0]
    tags, m = student.data.tags, student.data.metrics
    members = tags["kdexp.member_run_ids"].split(",")
    known = {r.info.run_id for runs in roles.values() for r in runs}
    assert len(members) == 3 and set(members) <= known and new_teachers[0].info.run_id in members
    assert tags["teacher"] == "ensemble(cnn_small+cnn_tiny+cnn_tiny)" and tags["kdexp.method"] == "kd+ensemble"
    assert {"teacher/test_top1", "teacher/member0/test_top1", "teacher/member2/test_top1",
            "student/pre_finetune/test_top1", "student/agreement"} <= set(m)
    assert student.data.params["teacher.combine"] == "mean_probs"
