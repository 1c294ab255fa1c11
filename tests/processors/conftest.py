"""A demo dataset reconstructed once per test session, for the tests that read journeys like analysts do."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest
from clickhouse_connect.driver.client import Client

from processors.config import Settings
from processors.demo import DemoResult, run_demo
from processors.storage import connect, migrate, migrations


@pytest.fixture(scope="session")
def mining_demo(
    chdb_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Client, DemoResult]]:
    """600 customers with the demo's two planted pain points, in database `mining_demo`."""
    settings = Settings.load(dsn=f"chdb://{chdb_path}?database=mining_demo")
    result = run_demo(settings, customers=600, seed=21, directory=tmp_path_factory.mktemp("mining"))
    yield connect(settings.dsn), result


_older = itertools.count(1)


@pytest.fixture
def database_before_point_ids(mining_demo: tuple[Client, DemoResult], chdb_path: Path) -> str:
    """The mining demo's touchpoints and journeys in a fresh database as migration 0005 left it."""
    dsn = f"chdb://{chdb_path}?database=before_point_ids_{next(_older)}"
    old = connect(dsn)
    migrate(old, until=5)
    for table in ("touchpoint_versions", "journey_versions"):
        old.command(f"INSERT INTO {table} SELECT * FROM mining_demo.{table}")
    # A bulk copy's blocks split journeys, which the writers never do: roll them up once instead,
    # with 0005's own statement for the rows stored before it.
    old.command("TRUNCATE TABLE journey_point_rollups")
    (fifth,) = [m for m in migrations() if m.version == 5]
    (backfill,) = [s for s in fifth.statements() if s.startswith("INSERT INTO journey_point_rollups")]
    old.command(backfill.rstrip(";"))
    return dsn
