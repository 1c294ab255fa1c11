"""Shared fixtures.

chDB holds one data path per process, so the whole pytest process uses one
embedded path and every test gets its own database inside it.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest

from processors.storage import close_all

PII_KEY = "test-pii-key-0123456789abcdef"
_databases = itertools.count(1)


@pytest.fixture(scope="session")
def chdb_path(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("chdb")
    yield path
    close_all()


@pytest.fixture
def dsn(chdb_path: Path, request: pytest.FixtureRequest) -> str:
    """A fresh database in the session's embedded chDB."""
    return f"chdb://{chdb_path}?database=t{next(_databases)}"


@pytest.fixture(autouse=True)
def pii_key(monkeypatch: pytest.MonkeyPatch) -> str:
    """A known PII key for every test (and no key file written into the work tree)."""
    monkeypatch.setenv("JOURNEYS_PII_KEY", PII_KEY)
    monkeypatch.delenv("JOURNEYS_PII_KEY_FILE", raising=False)
    monkeypatch.delenv("JOURNEYS_DB", raising=False)
    monkeypatch.delenv("JOURNEYS_CONFIG", raising=False)
    monkeypatch.delenv("JOURNEYS_RULES", raising=False)
    return PII_KEY
