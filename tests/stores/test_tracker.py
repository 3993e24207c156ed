"""kdexp.tracking.runs.Tracker on a SQLite store: what it records has its passwords masked; a new experiment's
artifacts go to tracking.artifact_root (a tracking server's own store is covered in test_shared_stores)."""

from __future__ import annotations

from pathlib import Path

import pytest

from kdexp.tracking.runs import Tracker

pytestmark = pytest.mark.slow  # a new MLflow store: its migrations take seconds

PW = "Tracker-Secret-51"
URI = f"postgresql://kd:{PW}@db/mlflow"


def test_params_tags_errors_and_text_artifacts_are_masked(tmp_path):
    tracker = Tracker(f"sqlite:///{tmp_path}/mlflow.db", "e", artifact_root=tmp_path / "art")
    assert tracker.client.get_experiment(tracker.experiment_id).artifact_location == (tmp_path / "art").as_uri()
    run_id = tracker.start("r", {"kdexp.role": "student", "note": URI}, {"tracking.uri": URI, "seed": "1"})
    tracker.set_tags(run_id, {"later": f"storage {URI}"})
    config = tmp_path / "config.yaml"
    config.write_text(f"tracking:\n  uri: {URI}\n")
    tracker.log_artifact(run_id, config)
    (tmp_path / "weights.pt").write_bytes(b"\x00binary")
    tracker.log_artifact(run_id, tmp_path / "weights.pt")
    tracker.fail(run_id, RuntimeError(f"could not reach {URI}"))
    run = tracker.client.get_run(run_id)
    masked = "postgresql://kd:***@db/mlflow"
    assert run.data.params == {"tracking.uri": masked, "seed": "1"}
    assert run.data.tags["note"] == masked and run.data.tags["later"] == f"storage {masked}"
    assert run.data.tags["kdexp.error"] == f"RuntimeError: could not reach {masked}"
    assert run.info.status == "FAILED"
    stored = {p.name: p for p in (tmp_path / "art").rglob("*") if p.is_file()}
    assert set(stored) == {"config.yaml", "weights.pt", "error.txt", "requirements.txt"}
    assert stored["config.yaml"].read_text() == f"tracking:\n  uri: {masked}\n"
    assert PW in config.read_text()  # the caller's file is left alone (the run folder is the callback's job)
    assert all(PW.encode() not in p.read_bytes() for p in stored.values())
    assert all(PW.encode() not in p.read_bytes() for p in Path(tmp_path).glob("mlflow.db*"))


def test_runs_record_the_code_the_process_loaded_not_a_later_head(tmp_path, monkeypatch):
    import kdexp.tracking.runs as tracking

    monkeypatch.setattr(tracking, "_git", lambda *a: {"rev-parse": "1" * 40, "status": " M kdexp/x.py"}[a[0]])
    loaded = tracking.source_tags()
    assert {k: v for k, v in loaded.items() if "git" in k or "dirty" in k} == {
        "mlflow.source.git.commit": "1" * 40, "kdexp.source.dirty": "true"}
    monkeypatch.setattr(tracking, "SOURCE_TAGS", loaded)
    monkeypatch.setattr(tracking, "_git", lambda *a: {"rev-parse": "2" * 40, "status": ""}[a[0]])  # a commit since
    tracker = Tracker(f"sqlite:///{tmp_path}/mlflow.db", "e", artifact_root=tmp_path / "art")
    tags = tracker.client.get_run(tracker.start("r", {})).data.tags
    assert tags["mlflow.source.git.commit"] == "1" * 40 and tags["kdexp.source.dirty"] == "true"
    assert tracking.source_tags()["kdexp.source.dirty"] == "false"
    monkeypatch.setattr(tracking, "_git", lambda *a: None)  # no git: no commit tags rather than wrong ones
    assert set(tracking.source_tags()) == {"mlflow.source.name", "mlflow.source.type", "mlflow.user"}


def test_every_run_records_its_frozen_environment_read_once_per_process(tmp_path):
    from importlib import metadata

    import kdexp.tracking.runs as tracking

    tracking.environment.cache_clear()
    tracker = Tracker(f"sqlite:///{tmp_path}/mlflow.db", "e", artifact_root=tmp_path / "art")
    first, second = tracker.start("a", {}), tracker.start("b", {})
    info = tracking.environment.cache_info()
    assert (info.misses, info.hits) == (1, 1)  # two runs, one look at the installed packages
    for run_id in (first, second):
        tags = tracker.client.get_run(run_id).data.tags
        for name in ("torch", "lightning", "optuna", "mlflow", "hydra-core"):
            assert tags[f"kdexp.lib.{name}"] == metadata.version(name), name
        text = Path(tracker.client.download_artifacts(run_id, tracking.REQUIREMENTS_ARTIFACT, str(tmp_path / run_id)))
        lines = text.read_text().splitlines()
        names = [line.split("==")[0] for line in lines[1:]]
        assert lines[0].startswith("# python ") and names == sorted(names) and len(names) > 20
        assert f"scipy=={metadata.version('scipy')}" in lines and f"mlflow=={metadata.version('mlflow')}" in lines
