"""A throwaway PostgreSQL cluster for the whole session (tests/servers.py); skipped where it cannot run."""

from __future__ import annotations

import pytest

from tests.servers import postgres_cluster, why_no_postgres


@pytest.fixture(scope="session")
def postgres():
    reason = why_no_postgres()
    if reason:
        pytest.skip(reason)
    with postgres_cluster() as pg:
        yield pg
