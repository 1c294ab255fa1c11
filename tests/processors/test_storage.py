"""DSN parsing, the one-embedded-path rule, and migrations on a real chDB."""

from __future__ import annotations

from pathlib import Path

import pytest

from processors.storage import StorageError, Target, connect, default_dsn, migrate, migrations


@pytest.mark.parametrize(
    ("dsn", "database", "embedded", "path"),
    [
        ("chdb:///var/lib/journeys?database=prod", "prod", True, "/var/lib/journeys"),
        ("chdb://memory", "journeys", True, None),
        ("http://writer:secret@ch.internal:8123/analytics", "analytics", False, None),
        ("https://ch.internal:8443/?database=j2", "j2", False, None),
    ],
)
def test_target_parse(dsn: str, database: str, embedded: bool, path: str | None) -> None:
    target = Target.parse(dsn)
    assert (target.database, target.embedded, target.path) == (database, embedded, path)
    assert "database=" not in target.dsn


def test_a_relative_embedded_path_becomes_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    target = Target.parse("chdb://.journeys/chdb?database=demo")
    assert (target.path, target.database) == (str(tmp_path / ".journeys" / "chdb"), "demo")
    assert target.dsn == f"chdb://{tmp_path}/.journeys/chdb"


@pytest.mark.parametrize(
    ("dsn", "message"),
    [("mysql://h/db", "unsupported DSN scheme"), ("chdb:///x?database=a;DROP", "not a plain identifier")],
)
def test_target_parse_rejects(dsn: str, message: str) -> None:
    with pytest.raises(StorageError, match=message):
        Target.parse(dsn)


def test_default_dsn_is_under_dot_journeys(tmp_path: Path) -> None:
    assert default_dsn(tmp_path) == f"chdb://{tmp_path}/.journeys/chdb?database=journeys"


def test_one_embedded_path_per_process(dsn: str, tmp_path: Path) -> None:
    connect(dsn)
    with pytest.raises(StorageError, match="one data path per process"):
        connect(f"chdb://{tmp_path / 'other'}?database=x")


def test_clients_of_two_databases_in_one_path_keep_their_own_database(chdb_path: Path) -> None:
    first = connect(f"chdb://{chdb_path}?database=keeps_a")
    second = connect(f"chdb://{chdb_path}?database=keeps_b")
    # Connecting to another database must not switch a client someone else holds.
    assert first.query("SELECT currentDatabase()").result_rows == [("keeps_a",)]
    assert second.query("SELECT currentDatabase()").result_rows == [("keeps_b",)]
    assert connect(f"chdb://{chdb_path}?database=keeps_a") is first


def test_migrate_is_idempotent_and_creates_the_analyst_views(dsn: str) -> None:
    client = connect(dsn)
    versions = [m.version for m in migrations()]
    assert [m.version for m in migrate(client, until=2)] == [1, 2]
    assert [m.version for m in migrate(client)] == versions[2:]
    assert migrate(client) == []
    names = {
        row[0]
        for row in client.query(
            "SELECT name FROM system.tables WHERE database = currentDatabase()"
        ).result_rows
    }
    assert {"touchpoints", "journeys", "identity_merges", "dead_letters", "channel_switches"} <= names
    columns = {row[0] for row in client.query("DESCRIBE TABLE journeys").result_rows}
    assert {
        "journey_id",
        "customer_id",
        "status",
        "started_at",
        "ended_at",
        "last_phase",
        "last_channel",
        "last_action",
        "phases_reached",
        "touchpoint_count",
        "channel_switches",
    } <= columns
    columns = {row[0] for row in client.query("DESCRIBE TABLE touchpoints").result_rows}
    assert {
        "event_id",
        "customer_id",
        "journey_id",
        "occurred_at",
        "channel",
        "source",
        "action",
        "phase",
        "sentiment",
    } <= columns
    columns = {row[0] for row in client.query("DESCRIBE TABLE dead_letters").result_rows}
    assert {"raw", "reason", "format", "received_at"} <= columns
