"""The writers' background inserts, on a real chDB: order, read-your-writes, failures."""

from __future__ import annotations

import pytest
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import DatabaseError

from processors.sinks.clickhouse import BackgroundInserts
from processors.storage import connect


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
