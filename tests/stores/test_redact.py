"""kdexp.tracking.redact: passwords masked in URIs, DSNs, config trees, log records and files; the rest untouched."""

from __future__ import annotations

import logging

import pytest
from omegaconf import OmegaConf

from kdexp.tracking.redact import MASK, install_log_redaction, redact_config, redact_text, redact_uri, remember_secret
from kdexp.tracking.redact_hydra import redact_folder


@pytest.mark.parametrize(("text", "expected"), [
    ("postgresql://kd:pw@127.0.0.1:5432/db", "postgresql://kd:***@127.0.0.1:5432/db"),
    ("postgresql+psycopg://kd:p%40ss@h/db?sslmode=require", "postgresql+psycopg://kd:***@h/db?sslmode=require"),
    ("https://alice:tok@mlflow.lab:443/", "https://alice:***@mlflow.lab:443/"),
    ("tracking.uri=mysql://u:x@h/d seed=1", "tracking.uri=mysql://u:***@h/d seed=1"),
    ("host=db user=kd password=pw dbname=x", "host=db user=kd password=*** dbname=x"),
    ("{'password': 'pw', 'user': 'kd'}", "{'password': '***', 'user': 'kd'}"),
    ("db:\n  password: hunter2\n  db_password: x1\n", "db:\n  password: ***\n  db_password: ***\n"),
    ("+db.password=x2 db_password=x3", "+db.password=*** db_password=***"),
    ("refused the user or password: password authentication", "refused the user or password: password authentication"),
    # nothing secret: a user without password, a port, a path with '@', a plain word
    ("postgresql://kd@h:5432/db", "postgresql://kd@h:5432/db"),
    ("http://127.0.0.1:5000/api@v2", "http://127.0.0.1:5000/api@v2"),
    ("sqlite:///outputs/mlflow.db", "sqlite:///outputs/mlflow.db"),
])
def test_uri_passwords_are_masked(text, expected):
    assert redact_text(text) == expected


def test_a_password_seen_once_is_masked_everywhere_later():
    secret = "uniq-Secret-4711"
    assert redact_uri(f"postgresql://kd:{secret}@h/db") == "postgresql://kd:***@h/db"
    assert redact_text(f"FATAL: role with {secret} in an error") == "FATAL: role with *** in an error"
    assert redact_uri(None) is None
    remember_secret("pw")  # too short to mask loosely: 'pw' in words must survive
    assert redact_text("pwd and pw") == "pwd and pw"
    # A lowercase word as password is masked in its URI, but not in every other URL.
    assert redact_text("postgresql://postgres:postgres@h/db") == "postgresql://postgres:***@h/db"
    assert redact_text("postgresql://kd@h/postgres") == "postgresql://kd@h/postgres"


def test_config_trees_are_masked_without_touching_the_input(monkeypatch):
    monkeypatch.setenv("KDEXP_TEST_PW", "env-Secret-99")
    conf = OmegaConf.create({
        "tracking": {"uri": "postgresql://kd:${oc.env:KDEXP_TEST_PW}@h/db", "experiment": "e"},
        "db": {"password": "plain-Secret-1", "api_key": "k-123456", "tokenizer": "bpe", "db_password": "s"},
        "hydra_overrides": ["tracking.uri=postgresql://kd:cli-Secret-2@h/db", "seed=1"],
        "seed": 3,
    })
    out = redact_config(conf)
    assert out["tracking"] == {"uri": "postgresql://kd:***@h/db", "experiment": "e"}
    assert out["db"] == {"password": MASK, "api_key": MASK, "tokenizer": "bpe", "db_password": MASK}
    assert out["hydra_overrides"] == ["tracking.uri=postgresql://kd:***@h/db", "seed=1"]
    assert out["seed"] == 3
    assert "plain-Secret-1" in OmegaConf.to_yaml(conf)  # a copy was masked, not the caller's config
    assert redact_text("log line with plain-Secret-1") == "log line with ***"  # and remembered


def test_log_records_are_masked_whatever_the_handler(caplog):
    install_log_redaction()
    install_log_redaction()  # idempotent
    with caplog.at_level(logging.INFO):
        logging.getLogger("hydra.launcher").info("#0 : %s seed=%d", "tracking.uri=postgresql://u:Log-Secret-7@h/d", 0)
    assert caplog.messages == ["#0 : tracking.uri=postgresql://u:***@h/d seed=0"]
    assert "Log-Secret-7" not in caplog.text


def test_job_folders_are_rewritten_masked(tmp_path):
    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "overrides.yaml").write_text("- tracking.uri=postgresql://u:File-Secret-8@h/d\n")
    (tmp_path / "train.log").write_text("nothing to hide\n")
    (tmp_path / "student.pt").write_bytes(b"\x80File-Secret-8")  # binary: never rewritten
    assert redact_folder(tmp_path) == 1
    assert (tmp_path / ".hydra" / "overrides.yaml").read_text() == "- tracking.uri=postgresql://u:***@h/d\n"
    assert (tmp_path / "student.pt").read_bytes() == b"\x80File-Secret-8"
