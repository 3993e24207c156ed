"""Passwords stay in the URI they came in: masking for everything kdexp writes, logs or tracks.

A password may arrive in a URI's user info (``postgresql://u:pw@host/db``, ``http://u:pw@host``), in a libpq
``password=`` setting, under a config key that names a secret, or in an environment variable (PGPASSWORD,
MLFLOW_TRACKING_URI, ...). ``redact_text`` masks all of these as ``***`` and remembers every password it saw,
so that the same password is masked later wherever it shows up on its own (an error message, a log line).
This module is imported by Hydra callbacks and the CLI: it must stay free of heavy imports.
"""

from __future__ import annotations

import copy
import logging
import os
import re
import threading
from typing import Any
from urllib.parse import unquote

MASK = "***"
# scheme://user:password@ -- the password may not hold '@', '/', whitespace or quotes unescaped (RFC 3986:
# they are percent-encoded in a URL); a password with quotes is still masked once remembered.
_USERINFO = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.\-]*://[^:/@\s'\"]*:)(?P<pw>[^@/\s'\"]+)(?P<tail>@)")
# libpq DSNs and queries (password=pw), YAML keys (password: pw) and dict reprs ('password': 'pw'); not prose
# such as "user or password: password authentication failed".
_PW = r"[\w.-]*(?:password|passwd)"
_KEYWORD = re.compile(
    rf"(?P<head>(?:\b{_PW}\s*=|['\"]{_PW}['\"]\s*:|^[ \t-]*{_PW}\s*:)\s*['\"]?)(?P<pw>[^\s&;,'\"}}]+)",
    re.IGNORECASE | re.MULTILINE)
# Config keys whose whole value is a secret: password, db_password, api_key, access_token, client_secret ...
SECRET_KEYS = re.compile(r"(.*[_.-])?(password|passwd|secret|token|api_?key|secret_?key|credentials?)",
                         re.IGNORECASE)
# Environment variables that hold a password, or a URI that may hold one.
SECRET_ENV = ("PGPASSWORD", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN", "AWS_SECRET_ACCESS_KEY")
URI_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "KDEXP_OPTUNA_STORAGE", "KDEXP_TRIAL_STORAGE",
           "DATABASE_URL")
# A remembered password is masked wherever it appears; shorter ones only where a URI or key puts them,
# as masking "pw" in every word would garble logs without protecting much.
MIN_LOOSE_LEN = 6

_known: set[str] = set()
_lock = threading.Lock()


def remember_secret(secret: str | None) -> None:
    """Mask this value from now on wherever it appears (also in its URL-decoded form)."""
    if not secret or secret == MASK:
        return
    with _lock:
        _known.update(s for s in {secret, unquote(secret)} if _loose(s))


def _loose(secret: str) -> bool:
    """Whether to mask a secret wherever it appears: not a short one, nor a plain lowercase word (a password
    "postgres" masked in every "postgresql://" would garble every URL; it is still masked where a URI or a
    key puts it)."""
    return len(secret) >= MIN_LOOSE_LEN and not (secret.isalpha() and secret.islower())


def remember_environment(environ: os._Environ | dict | None = None) -> None:
    """Passwords in the usual environment variables, so that a resolved ``${oc.env:...}`` is masked too."""
    environ = os.environ if environ is None else environ
    for name in SECRET_ENV:
        remember_secret(environ.get(name))
    for name in URI_ENV:
        if environ.get(name):
            redact_text(environ[name])


def redact_text(text: str) -> str:
    """Every URI password, ``password=`` value and remembered secret in `text` replaced by ``***``."""
    if not isinstance(text, str) or not text:
        return text

    def mask(match: re.Match) -> str:
        remember_secret(match["pw"])
        return f"{match['head']}{MASK}{match.groupdict().get('tail') or ''}"

    text = _KEYWORD.sub(mask, _USERINFO.sub(mask, text))
    with _lock:
        known = sorted(_known, key=len, reverse=True)  # a longer secret first, if one holds another
    for secret in known:
        if secret in text:
            text = text.replace(secret, MASK)
    return text


def redact_uri(uri: str | None) -> str | None:
    """``postgresql://u:pw@host/db`` -> ``postgresql://u:***@host/db``; None stays None."""
    return None if uri is None else redact_text(str(uri))


def redact_config(conf: Any) -> Any:
    """A copy of a config tree (dicts, lists, OmegaConf nodes resolved) with every secret masked: string
    values through `redact_text`, and the whole value of a key that names a secret (``password``, ``token``)."""
    if hasattr(conf, "_metadata"):  # an OmegaConf node: resolved here, so interpolated secrets are seen
        from omegaconf import OmegaConf
        from omegaconf.errors import OmegaConfBaseException

        try:
            conf = OmegaConf.to_container(conf, resolve=True)
        except OmegaConfBaseException:  # e.g. ${hydra:...} outside a job: masked as written
            conf = OmegaConf.to_container(conf, resolve=False)
    return _redact_node(copy.deepcopy(conf))


def _redact_node(node: Any, key: str = "") -> Any:
    if isinstance(node, dict):
        return {k: _redact_node(v, str(k)) for k, v in node.items()}
    if isinstance(node, (list, tuple)):
        return type(node)(_redact_node(v) for v in node)
    if isinstance(node, str):
        if key and SECRET_KEYS.fullmatch(key) and node and not node.startswith("${"):
            remember_secret(node)
            return MASK
        return redact_text(node)
    return node


class _RedactingFactory:
    """A LogRecord factory: each record's message is masked once, whichever handler later writes it.

    A filter on handlers would be lost each time Hydra reconfigures logging (every job does); the record
    factory is process-wide and survives that."""

    def __init__(self, inner):
        self.inner = inner

    def __call__(self, *args, **kwargs) -> logging.LogRecord:
        record = self.inner(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a malformed record is logging's to report, not ours
            return record
        masked = redact_text(message)
        if masked != message:
            record.msg, record.args = masked, ()
        return record


def install_log_redaction() -> None:
    """Mask secrets in every log record of this process from now on (idempotent)."""
    factory = logging.getLogRecordFactory()
    if not isinstance(factory, _RedactingFactory):
        logging.setLogRecordFactory(_RedactingFactory(factory))
    remember_environment()
