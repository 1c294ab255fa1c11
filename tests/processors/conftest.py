"""A demo dataset reconstructed once per test session, for the tests that read journeys like analysts do."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from clickhouse_connect.driver.client import Client

from processors.config import Settings
from processors.demo import DemoResult, run_demo
from processors.storage import connect


@pytest.fixture(scope="session")
def mining_demo(
    chdb_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Client, DemoResult]]:
    """600 customers with the demo's two planted pain points, in database `mining_demo`."""
    settings = Settings.load(dsn=f"chdb://{chdb_path}?database=mining_demo")
    result = run_demo(settings, customers=600, seed=21, directory=tmp_path_factory.mktemp("mining"))
    yield connect(settings.dsn), result
