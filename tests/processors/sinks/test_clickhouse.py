"""The writers on a real chDB: background inserts (order, read-your-writes, failures) and the state."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import DatabaseError, DataError

from journeys.reconstruct import Reconstruction
from journeys.touchpoint import Channel, CompactTouchpoint, Identifier, Touchpoint
from processors.config import Settings
from processors.sinks import clickhouse as sink
from processors.sinks.clickhouse import BackgroundInserts
from processors.storage import connect, migrate


@pytest.fixture
def client(dsn: str) -> Client:
    client = connect(dsn)
    client.command("CREATE TABLE log (n UInt32, at UInt32) ENGINE = MergeTree ORDER BY at")
    return client


def test_a_query_sees_every_insert_queued_before_it(client: Client) -> None:
    with BackgroundInserts(client) as store:
        for chunk in range(20):
            store.insert("log", [(chunk, chunk * 1000 + i) for i in range(1000)], ["n", "at"])
        assert store.query("SELECT count(), max(at) FROM log").result_rows == [(20_000, 19_999)]
        store.insert("log", [(20, 20_000)], ["n", "at"])
    assert client.query("SELECT count() FROM log").result_rows == [(20_001,)]


def test_columns_are_emptied_once_inserted(client: Client) -> None:
    columns = [[1, 2, 3], [10, 20, 30]]
    with BackgroundInserts(client) as store:
        store.insert("log", columns, ["n", "at"], column_oriented=True)
        assert store.query("SELECT sum(n), sum(at) FROM log").result_rows == [(6, 60)]
    assert columns == [[], []]


def test_a_failed_insert_is_raised_in_the_caller_and_what_follows_is_dropped(client: Client) -> None:
    store = BackgroundInserts(client)
    store.insert("no_such_table", [(1, 1)], ["n", "at"])
    store.insert("log", [(1, 1)], ["n", "at"])
    with pytest.raises(DatabaseError):
        store.drain()
    with pytest.raises(DatabaseError):
        store.close()
    assert client.query("SELECT count() FROM log").result_rows == [(0,)]


def test_the_caller_s_error_wins_and_the_thread_stops(client: Client) -> None:
    with pytest.raises(KeyError), BackgroundInserts(client) as store:
        store.insert("no_such_table", [(1, 1)], ["n", "at"])
        raise KeyError("the caller's")
    with pytest.raises(RuntimeError, match="closed"):
        store.insert("log", [(1, 1)], ["n", "at"])


class _CountingContexts:
    """A real client that counts the insert contexts made through it."""

    def __init__(self, client: Client) -> None:
        self.client, self.made = client, 0

    def create_insert_context(self, *args: Any, **kwargs: Any) -> Any:
        self.made += 1
        return self.client.create_insert_context(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)


def test_a_table_s_insert_context_is_made_once_and_made_again_after_a_failure(client: Client) -> None:
    counting = _CountingContexts(client)
    store = sink.InsertContexts(counting)  # type: ignore[arg-type]
    for n in range(3):
        store.insert("log", [[n], [n]], ["n", "at"], column_oriented=True)
    assert counting.made == 1  # not a DESCRIBE before every insert
    with pytest.raises((TypeError, ValueError, DataError)):
        store.insert("log", [["not a number"], [3]], ["n", "at"], column_oriented=True)
    store.forget()  # as the sink does before it retries
    store.insert("log", [[4], [4]], ["n", "at"], column_oriented=True)
    assert counting.made == 2
    assert client.query("SELECT groupArray(n) FROM (SELECT n FROM log ORDER BY at)").result_rows == [
        ([0, 1, 2, 4],)
    ]


def _state(client: Client) -> dict[str, list[tuple]]:
    tables = {
        "touchpoints": "event_id, customer_id, journey_id, seq, phase, sentiment, properties",
        "journeys": "journey_id, customer_id, status, touchpoint_count, path_steps, emotion_peak",
        "identities": "identifier_type, identifier_value, customer_id",
        "identity_merges": "event_id, survivor_customer_id, absorbed_customer_id",
    }
    return {
        table: sorted(client.query(f"SELECT {columns} FROM {table}").result_rows)
        for table, columns in tables.items()
    }


def test_state_written_in_small_chunks_is_the_state_written_at_once(
    dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """write_state folds customer by customer and writes rows (identities too) in chunks."""
    settings = Settings.load(dsn=dsn)
    reconstruction = Reconstruction(settings.rules(), settings.identity, settings.journey)
    start = datetime(2026, 9, 1, tzinfo=UTC)
    for index in range(60):
        person, visit = index % 7, index // 7
        identifiers = [Identifier(type="anonymous_id", value=f"a-{person}-{visit % 2}")]
        if visit >= 3:  # logs in later: links the two devices (a merge) through the user id
            identifiers.append(Identifier(type="user_id", value=f"u-{person}"))
        reconstruction.admit(
            Touchpoint(
                event_id=f"e-{index}",
                occurred_at=start + timedelta(hours=index),
                channel=Channel.WEB,
                source="segment",
                action="Order Completed" if visit == 6 else "Page Viewed",
                identifiers=tuple(identifiers),
                properties={"path": f"/p/{visit}"},
                sentiment=-0.0 if index % 5 == 0 else None,
            )
        )
    states = []
    for chunk, name in ((sink.STATE_CHUNK_ROWS, "whole"), (3, "chunked")):
        monkeypatch.setattr(sink, "STATE_CHUNK_ROWS", chunk)
        client = connect(f"{dsn}{name}")
        migrate(client)
        assert sink.write_state(client, reconstruction) == (len(list(reconstruction.journeys())), 0)
        states.append(_state(client))
    assert states[0] == states[1]
    assert len(states[0]["touchpoints"]) == 60 and states[0]["identity_merges"]


def test_the_event_log_is_read_back_whole_as_a_stream(dsn: str) -> None:
    """A replay reads the log block by block (never the whole log as rows at once): while it is
    being read the connection is busy with it, and every event comes back as it was written."""
    client = connect(dsn)
    migrate(client)
    at = datetime(2026, 1, 1, tzinfo=UTC)
    written = [
        Touchpoint(
            event_id=f"e{index}", occurred_at=at + timedelta(seconds=index), received_at=at,
            channel=Channel.WEB, source="segment", action="Page Viewed",
            identifiers=(Identifier(type="anonymous_id", value=f"a{index % 2}"),),
            properties={"path": f"/p/{index}"}, sentiment=-0.5 if index else None,
        )
        for index in range(3)
    ]  # fmt: skip
    sink.write_events(client, [CompactTouchpoint.of(touchpoint) for touchpoint in written])
    events = sink.read_events(client)
    first = next(events)
    with pytest.raises(Exception, match="streaming"):  # chDB: one stream at a time, and it is open
        client.query("SELECT 1")
    read = sorted([first, *events], key=lambda touchpoint: touchpoint.event_id)
    assert [CompactTouchpoint.of(tp) for tp in read] == [CompactTouchpoint.of(tp) for tp in written]
    assert client.query("SELECT count() FROM events").result_rows == [(3,)]  # released at the end


def test_a_customer_s_live_journeys_are_read_by_customer_and_agree_with_the_view(dsn: str) -> None:
    client = connect(dsn)
    migrate(client, until=6)  # part of the history is written before migration 0007 adds the projection
    # Per journey (customer, [(version, is_deleted), …]) in write order: kept, updated, tombstoned,
    # tombstoned then written again, and other customers' journeys around them.
    history = {
        "j1": ("c1", [(1, 0)]),
        "j2": ("c1", [(1, 0), (3, 0)]),
        "j3": ("c1", [(1, 0), (2, 1)]),
        "j4": ("c2", [(1, 0), (2, 1), (5, 0)]),
        "j5": ("c3", [(4, 0)]),
    }
    for journey_id, (customer_id, versions) in history.items():
        if journey_id == "j3":
            assert [m.version for m in migrate(client)] == [7]
        for version, deleted in versions:  # one insert each: rows in separate parts, as the sink leaves them
            client.insert(
                "journey_versions",
                [(journey_id, customer_id, version, deleted)],
                column_names=["journey_id", "customer_id", "version", "is_deleted"],
            )
    ids = {"ids": ["c1", "c2", "c9"]}

    def live() -> list[str]:
        return sorted(row[0] for row in client.query(sink.LIVE_JOURNEYS_OF, parameters=ids).result_rows)

    view = client.query(
        "SELECT journey_id FROM journeys WHERE customer_id IN {ids:Array(String)} ORDER BY journey_id",
        parameters=ids,
    ).result_rows
    assert live() == [row[0] for row in view] == ["j1", "j2", "j4"]
    client.command("OPTIMIZE TABLE journey_versions FINAL")  # a merge rebuilds the projection's rows
    assert live() == ["j1", "j2", "j4"]
    plan = "\n".join(
        row[0]
        for row in client.query(
            "EXPLAIN projections = 1 " + sink.LIVE_JOURNEYS_OF.replace("{ids:Array(String)}", "['c1']")
        ).result_rows
    )
    assert "journeys_by_customer" in plan  # read by customer, not the whole customer_id column
    without = client.query(
        "SELECT count() FROM system.parts WHERE database = currentDatabase() AND table = 'journey_versions' "
        "AND active AND name NOT IN (SELECT parent_name FROM system.projection_parts "
        "WHERE database = currentDatabase() AND table = 'journey_versions' AND active)"
    ).result_rows
    assert without == [(0,)]  # the parts written before 0007 got the projection too
