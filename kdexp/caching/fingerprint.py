"""Content keys of what kdexp caches and records (models, teacher outputs, matrix cells), and small in-process
memos. No torch here: config validation uses these before the heavy imports."""

from __future__ import annotations

import hashlib
import json

CACHE_FORMAT = 1  # bump when what a fingerprint means changes


def fingerprint(spec: dict) -> str:
    blob = json.dumps({"format": CACHE_FORMAT, **spec}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def remember(memo: dict, key, value, kept: int):
    """memo[key] = value, dropping the oldest entries beyond `kept` (in-process memos of a sweep's trials)."""
    memo[key] = value
    while len(memo) > kept:
        memo.pop(next(iter(memo)))
    return value
