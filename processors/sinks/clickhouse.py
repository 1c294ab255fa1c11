"""Writes the core's results to ClickHouse, and reads the event log back for replay.

Inserts through clickhouse-connect, optionally on a background thread
(`BackgroundInserts`). Every derived row carries a
`version` from a per-process monotonic clock, so ReplacingMergeTree keeps the
newest state of each id; ids that a rewrite made disappear (a journey re-keyed by
a late identity link, a merge undone by an unlink) get a tombstone
(`is_deleted = 1`). Re-running the same input therefore never duplicates.
"""

from __future__ import annotations

import hashlib
import logging
import queue
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from operator import itemgetter
from types import TracebackType
from typing import Any, Protocol

import orjson
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.insert import InsertContext
from clickhouse_connect.driver.query import QueryResult

from ingest.records import DeadLetter
from journeys.fold import ClassifiedTouchpoint, Journey
from journeys.identity import IdentityConflict, IdentityMerge
from journeys.reconstruct import Reconstruction
from journeys.touchpoint import Channel, CompactTouchpoint, Identifier, Touchpoint

log = logging.getLogger("journeys.sink")

EVENT_COLUMNS = (
    "event_id",
    "occurred_at",
    "received_at",
    "channel",
    "source",
    "action",
    "identifiers",
    "properties",
    "persona",
    "sentiment",
    "value",
    "currency",
    "ingested_at",
)
TOUCHPOINT_COLUMNS = (
    "event_id",
    "customer_id",
    "journey_id",
    "seq",
    "occurred_at",
    "received_at",
    "channel",
    "source",
    "action",
    "phase",
    "rule",
    "is_passive",
    "is_failure",
    "failure_rule",
    "is_conversion",
    "sentiment",
    "value",
    "currency",
    "persona",
    "properties",
    "version",
    "written_at",
)


class Store(Protocol):
    """What the writers need of ClickHouse: a `Client`, `InsertContexts` or `BackgroundInserts`."""

    def insert(
        self,
        table: str,
        data: Sequence[Sequence[Any]],
        column_names: Sequence[str],
        column_oriented: bool = False,
    ) -> Any: ...

    def query(self, query: str, parameters: dict[str, Any] | None = None) -> QueryResult: ...


class InsertContexts:
    """A `Store` over a client that makes each table's insert context once and reuses it.

    Without a context clickhouse-connect asks ClickHouse for the table's column
    types (a `DESCRIBE`) before every insert: a round trip per table per write,
    which a sink writing several times a second pays over and over. Contexts are
    keyed by table, columns and orientation. `forget` drops them: after a failed
    insert (the retry starts from fresh contexts) or a schema change.
    """

    def __init__(self, client: Client) -> None:
        self.client = client
        self._contexts: dict[tuple[str, tuple[str, ...], bool], InsertContext] = {}

    def insert(
        self,
        table: str,
        data: Sequence[Sequence[Any]],
        column_names: Sequence[str],
        column_oriented: bool = False,
    ) -> Any:
        key = (table, tuple(column_names), column_oriented)
        context = self._contexts.get(key)
        if context is None:
            context = self.client.create_insert_context(
                table, column_names=list(column_names), column_oriented=column_oriented
            )
            self._contexts[key] = context
        return self.client.insert(data=data, context=context)

    def query(self, query: str, parameters: dict[str, Any] | None = None) -> QueryResult:
        return self.client.query(query, parameters=parameters)

    def command(self, command: str, parameters: dict[str, Any] | None = None) -> Any:
        return self.client.command(command, parameters=parameters)

    def forget(self) -> None:
        """Drop the cached contexts; the next insert into each table makes a new one."""
        self._contexts.clear()


Writer = Client | InsertContexts
"""What the stream sink's writers need: inserts, queries and commands (`INSERT … SELECT`), in order."""


class BackgroundInserts:
    """A `Store` whose inserts run one at a time, in order, on a background thread.

    ClickHouse does its part of an insert (chDB in this process, or the server
    while the HTTP client waits) without holding the GIL, so the caller goes on
    admitting events, folding journeys and building the next rows meanwhile:
    on two cores the engine's share of a run overlaps the Python work instead
    of adding to it. At most `depth` inserts wait, so memory stays bounded.

    A query first waits for every queued insert, so reads see all the writes
    made before them. An insert that fails is raised in the caller at its next
    insert or query, or at `close`; the inserts queued after it are dropped.
    The rows handed to `insert` must not be changed afterwards; column-oriented
    data is emptied once inserted (its column lists are cleared).

    Each table's insert context is made once and reused (`InsertContexts`):
    clickhouse-connect then asks for the table's column types once, not before
    every insert, and a context (a reference cycle: it holds a bound method of
    itself, and the rows it inserted last) is left for the garbage collector
    once per table, not once per insert — with the collector paused for a run,
    one cycle per insert kept every inserted row alive to the end.
    """

    def __init__(self, client: Client, depth: int = 1) -> None:
        self._client = client
        self._jobs: queue.Queue[tuple[str, Sequence[Sequence[Any]], tuple[str, ...], bool] | None]
        self._jobs = queue.Queue(depth)
        self._inserts = InsertContexts(client)
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=self._work, name="clickhouse-inserts", daemon=True)
        self._thread.start()

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            try:
                if job is None:
                    return
                if self._failure is None:
                    table, data, columns, column_oriented = job
                    self._inserts.insert(table, data, columns, column_oriented)
                    if column_oriented:  # the context keeps its last data: leave it empty lists
                        for column in data:
                            if isinstance(column, list):
                                column.clear()
            except BaseException as exc:
                self._failure = exc
            finally:
                self._jobs.task_done()

    def _raise(self) -> None:
        if self._failure is not None:
            raise self._failure

    def insert(
        self,
        table: str,
        data: Sequence[Sequence[Any]],
        column_names: Sequence[str],
        column_oriented: bool = False,
    ) -> None:
        if not self._thread.is_alive():
            raise RuntimeError("BackgroundInserts is closed")
        self._raise()
        self._jobs.put((table, data, tuple(column_names), column_oriented))

    def query(self, query: str, parameters: dict[str, Any] | None = None) -> QueryResult:
        self.drain()
        return self._client.query(query, parameters=parameters)

    def drain(self) -> None:
        """Wait until every queued insert is done; raise the first that failed."""
        self._jobs.join()
        self._raise()

    def close(self) -> None:
        """Finish the queued inserts and stop the thread; raise the first insert that failed."""
        self._stop()
        self._raise()

    def _stop(self) -> None:
        if self._thread.is_alive():
            self._jobs.put(None)
            self._thread.join()
        self._inserts.forget()

    def __enter__(self) -> BackgroundInserts:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if kind is None:
            self.close()
        else:
            self._stop()  # the caller's error is the one to see: stop without raising ours


class VersionClock:
    """Strictly increasing nanosecond versions, so a later write always wins."""

    def __init__(self) -> None:
        self._last = 0

    def next(self) -> int:
        self._last = max(self._last + 1, time.time_ns())
        return self._last


_clock = VersionClock()


def _utc(value: datetime) -> datetime:
    # chDB hands DateTime64('UTC') back as naive datetimes in UTC.
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


def _ms(value: datetime) -> int:
    """Epoch milliseconds: clickhouse-connect writes ints to DateTime64(3) without per-value conversion."""
    return round(value.timestamp() * 1000)


def _ms_or_none(value: datetime | None) -> int | None:
    return None if value is None else round(value.timestamp() * 1000)


def _stored_to_insert(value: Any) -> Any:
    """A value read back from ClickHouse, in the shape the insert path expects (datetimes as ms)."""
    if isinstance(value, datetime):
        return _ms(_utc(value))
    if isinstance(value, list) and value and isinstance(value[0], datetime):
        return [_ms(_utc(v)) for v in value]
    return value


def _insert(client: Store, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Insert rows, handed to clickhouse-connect as columns: its own rows-to-columns pass costs
    about 2 µs a row (of 3 for the whole insert on its side), this one under 1."""
    if rows:
        data = [list(map(itemgetter(index), rows)) for index in range(len(columns))]
        client.insert(table, data, column_names=list(columns), column_oriented=True)


def write_events(client: Store, touchpoints: Iterable[CompactTouchpoint]) -> int:
    """Append touchpoints to the canonical event log (idempotent on event_id)."""
    now = datetime.now(UTC)
    now_ms = _ms(now)
    rows = [
        (
            tp.event_id,
            _ms(tp.occurred_at),
            _ms(tp.received_at or now),
            str(tp.channel),  # a StrEnum: its str is its value
            tp.source,
            tp.action,
            tp.identifiers,
            tp.properties_json,
            tp.persona or "",
            tp.sentiment,
            tp.value,
            tp.currency or "",
            now_ms,
        )
        for tp in touchpoints
    ]
    _insert(client, "events", EVENT_COLUMNS, rows)
    return len(rows)


def read_events(client: Client) -> Iterator[Touchpoint]:
    """The event log as touchpoints, for rebuilding state (order does not matter).

    Streamed in ClickHouse's blocks (about 65,000 rows; on chDB too, through its `send_query`):
    the whole log as rows beside the aggregate being rebuilt from it would hold every event twice.
    Consume it to the end (or close it) before the next query on the same client: chDB refuses
    another query while a stream is open."""
    query = f"SELECT {', '.join(EVENT_COLUMNS[:-1])} FROM events FINAL"
    with client.query_row_block_stream(query) as stream:
        for block in stream:
            for (
                event_id,
                occurred_at,
                received_at,
                channel,
                source,
                action,
                identifiers,
                properties,
                persona,
                sentiment,
                value,
                currency,
            ) in block:
                yield Touchpoint.model_construct(
                    event_id=event_id,
                    occurred_at=_utc(occurred_at),
                    received_at=_utc(received_at),
                    channel=Channel(channel),
                    source=source,
                    action=action,
                    # Named tuples come back from clickhouse-connect as dicts.
                    identifiers=tuple(
                        Identifier.model_construct(type=i["type"], value=i["value"]) for i in identifiers
                    ),
                    properties=orjson.loads(properties),
                    persona=persona or None,
                    sentiment=None if sentiment is None else float(sentiment),
                    value=value,
                    currency=currency or None,
                )


def write_unlink(client: Store, identifier: tuple[str, str], reason: str) -> None:
    _insert(
        client,
        "identity_unlinks",
        ("identifier_type", "identifier_value", "requested_at", "reason"),
        [(identifier[0], identifier[1], datetime.now(UTC), reason)],
    )


def read_unlinks(client: Client) -> list[tuple[str, str]]:
    result = client.query("SELECT identifier_type, identifier_value FROM identity_unlinks FINAL")
    return [(t, v) for t, v in result.result_rows]


def dead_letter_fingerprint(letter: DeadLetter) -> str:
    digest = hashlib.sha256()
    for part in (letter.format.encode(), letter.origin.encode(), letter.reason.encode(), letter.raw):
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.hexdigest()


def write_dead_letters(client: Store, letters: Iterable[DeadLetter], run_id: str) -> int:
    rows = [
        (
            dead_letter_fingerprint(letter),
            letter.received_at,
            letter.format,
            letter.origin,
            letter.reason,
            letter.raw.decode("utf-8", errors="replace"),
            run_id,
        )
        for letter in letters
    ]
    _insert(
        client,
        "dead_letter_log",
        ("fingerprint", "received_at", "format", "origin", "reason", "raw", "run_id"),
        rows,
    )
    return len(rows)


def journey_row(journey: Journey, version: int, written_at: datetime, deleted: bool = False) -> tuple:
    return (*journey_values(journey), version, int(deleted), _ms(written_at))


def journey_values(journey: Journey) -> tuple:
    """A journey's columns without the write bookkeeping (version, is_deleted, written_at)."""
    switches = journey.channel_switches
    regressions = journey.regressions
    emotion = journey.emotion
    counts = journey.channel_counts
    return (
        journey.journey_id,
        journey.customer_id,
        journey.persona or "",
        journey.status.value,
        _ms(journey.started_at),
        _ms(journey.ended_at),
        _ms_or_none(journey.last_active_at),
        journey.entry_channel.value,
        journey.last_phase.value,
        journey.last_channel.value,
        journey.last_action,
        journey.dropoff_phase.value if journey.dropoff_phase else "",
        journey.dropoff_channel.value if journey.dropoff_channel else "",
        journey.dropoff_action or "",
        journey.dropoff_event_id or "",
        journey.dropoff_previous_channel.value if journey.dropoff_previous_channel else "",
        journey.dropoff_previous_action or "",
        [p.value for p in journey.phases_reached],
        [_ms(at) for at in journey.phase_reached_at],
        [p.value for p in journey.skipped_phases],
        len(regressions),
        [r.from_phase.value for r in regressions],
        [r.to_phase.value for r in regressions],
        [_ms(r.at) for r in regressions],
        journey.touchpoint_count,
        journey.active_touchpoint_count,
        counts[Channel.WEB],
        counts[Channel.EMAIL],
        counts[Channel.PHONE],
        counts[Channel.SOCIAL],
        journey.failure_count,
        len(switches),
        [s.from_channel.value for s in switches],
        [s.to_channel.value for s in switches],
        [_ms(s.at) for s in switches],
        [max(0, s.gap_seconds) for s in switches],
        [s.phase.value for s in switches],
        [int(s.after_failure) for s in switches],
        [s.failure_action or "" for s in switches],
        int(journey.converted),
        _ms_or_none(journey.converted_at),
        journey.revenue,
        len(emotion.points),
        emotion.peak,
        emotion.low,
        emotion.high,
        emotion.end,
        emotion.mean,
        _ms(journey.watermark),
        list(journey.path),
        [channel.value for channel, _ in journey.moments],
        [action for _, action in journey.moments],
    )


JOURNEY_COLUMNS = (
    "journey_id",
    "customer_id",
    "persona",
    "status",
    "started_at",
    "ended_at",
    "last_active_at",
    "entry_channel",
    "last_phase",
    "last_channel",
    "last_action",
    "dropoff_phase",
    "dropoff_channel",
    "dropoff_action",
    "dropoff_event_id",
    "dropoff_previous_channel",
    "dropoff_previous_action",
    "phases_reached",
    "phase_reached_at",
    "skipped_phases",
    "regressions",
    "regression_from",
    "regression_to",
    "regression_at",
    "touchpoint_count",
    "active_touchpoint_count",
    "web_touchpoints",
    "email_touchpoints",
    "phone_touchpoints",
    "social_touchpoints",
    "failure_count",
    "channel_switches",
    "switch_from",
    "switch_to",
    "switch_at",
    "switch_gap_seconds",
    "switch_phase",
    "switch_after_failure",
    "switch_failure_action",
    "converted",
    "converted_at",
    "revenue",
    "emotion_points",
    "emotion_peak",
    "emotion_low",
    "emotion_high",
    "emotion_end",
    "emotion_mean",
    "watermark",
    "path_steps",
    "moment_channel",
    "moment_action",
    "version",
    "is_deleted",
    "written_at",
)


def touchpoint_rows(
    reconstruction: Reconstruction,
    journey: Journey,
    version: int,
    at: datetime,
    steps: Mapping[str, ClassifiedTouchpoint] | None = None,
) -> list:
    return touchpoint_values(reconstruction, journey, at, (version, _ms(at)), steps)


def touchpoint_values(
    reconstruction: Reconstruction,
    journey: Journey,
    at: datetime,
    bookkeeping: tuple = (),
    steps: Mapping[str, ClassifiedTouchpoint] | None = None,
    only: Sequence[int] | None = None,
) -> list[tuple]:
    """The placed touchpoints' columns, then `bookkeeping` (`touchpoint_rows`: version, written_at).

    `steps`, the journey's touchpoints by event id when the caller has them at hand (the
    fold's input), saves making each again from the aggregate's columns. `only`: the positions
    of the touchpoints wanted (a journey sent in part), instead of all."""
    rows = []
    step = reconstruction.step if steps is None else steps.__getitem__
    customer_id, journey_id, persona = journey.customer_id, journey.journey_id, journey.persona or ""
    placed = journey.touchpoints if only is None else [journey.touchpoints[index] for index in only]
    for event_id, seq, phase, sentiment in placed:
        tp, cls = step(event_id)
        rows.append(
            (
                tp.event_id,
                customer_id,
                journey_id,
                seq,
                _ms(tp.occurred_at),
                _ms(tp.received_at or at),
                str(tp.channel),  # StrEnums: the str is the value
                tp.source,
                tp.action,
                str(phase),
                cls.rule or "",
                int(cls.passive),
                int(cls.failure),
                cls.failure_rule or "",
                int(cls.conversion),
                sentiment,
                tp.value,
                tp.currency or "",
                persona,
                tp.properties_json,
                *bookkeeping,
            )
        )
    return rows


def _current_ids(client: Store, query: str) -> set:
    return {row[0] if len(row) == 1 else tuple(row) for row in client.query(query).result_rows}


STATE_CHUNK_ROWS = 100_000  # touchpoint rows per insert: bounds the rows held in memory at once


def write_state(client: Store, reconstruction: Reconstruction) -> tuple[int, int]:
    """Write every customer's current journeys and touchpoints, and tombstone what vanished.

    Rows go out in chunks as the journeys are folded, so memory holds one chunk,
    not the whole state. Returns (journeys written, journeys deleted).
    """
    version, now = _clock.next(), datetime.now(UTC)
    live: set[str] = set()
    journey_rows: list[tuple] = []
    tp_rows: list[tuple] = []
    for journeys, steps in reconstruction.folded():
        by_event = {step.touchpoint.event_id: step for step in steps}
        for journey in journeys:
            live.add(journey.journey_id)
            journey_rows.append(journey_row(journey, version, now))
            tp_rows.extend(touchpoint_rows(reconstruction, journey, version, now, by_event))
            if len(tp_rows) >= STATE_CHUNK_ROWS:
                _insert(client, "journey_versions", JOURNEY_COLUMNS, journey_rows)
                _insert(client, "touchpoint_versions", TOUCHPOINT_COLUMNS, tp_rows)
                journey_rows, tp_rows = [], []
    _insert(client, "journey_versions", JOURNEY_COLUMNS, journey_rows)
    _insert(client, "touchpoint_versions", TOUCHPOINT_COLUMNS, tp_rows)
    merges, conflicts = _write_identity(client, reconstruction, version, now)
    return len(live), retire_missing(client, live, merges, conflicts)


def _tombstones(client: Store, stale: set[str], version: int, now: datetime) -> list[tuple]:
    if not stale:
        return []
    result = client.query(
        f"SELECT {', '.join(JOURNEY_COLUMNS)} FROM journey_versions FINAL "
        "WHERE journey_id IN {ids:Array(String)}",
        parameters={"ids": sorted(stale)},
    )
    position = {name: i for i, name in enumerate(JOURNEY_COLUMNS)}
    tombstones = []
    for stored in result.result_rows:
        row = [_stored_to_insert(value) for value in stored]
        row[position["version"]], row[position["is_deleted"]], row[position["written_at"]] = (
            version,
            1,
            _ms(now),
        )
        tombstones.append(tuple(row))
    return tombstones


MERGE_COLUMNS = (
    "event_id",
    "occurred_at",
    "survivor_customer_id",
    "absorbed_customer_id",
    "identifier_type",
    "identifier_value",
    "linked_type",
    "linked_value",
    "version",
    "is_deleted",
    "written_at",
)
CONFLICT_COLUMNS = (
    "event_id",
    "occurred_at",
    "reason",
    "identifier_type",
    "identifier_value",
    "linked_type",
    "linked_value",
    "customer_ids",
    "version",
    "is_deleted",
    "written_at",
)
IDENTITY_COLUMNS = ("identifier_type", "identifier_value", "customer_id", "version", "written_at")


def merge_values(merge: IdentityMerge) -> tuple:
    """An identity merge's columns without the write bookkeeping."""
    return (
        merge.event_id,
        _ms(merge.occurred_at),
        merge.surviving_customer_id,
        merge.absorbed_customer_id,
        *merge.identifiers[0],
        *merge.identifiers[1],
    )


def conflict_values(conflict: IdentityConflict) -> tuple:
    """A refused link's columns without the write bookkeeping."""
    return (
        conflict.event_id,
        _ms(conflict.occurred_at),
        conflict.reason,
        *conflict.identifiers[0],
        *conflict.identifiers[1],
        list(conflict.customer_ids),
    )


def _merge_tombstone(key: tuple, version: int, now_ms: int) -> tuple:
    event_id, absorbed = key
    return (event_id, now_ms, "", absorbed, "", "", "", "", version, 1, now_ms)


def _conflict_tombstone(key: tuple, version: int, now_ms: int) -> tuple:
    event_id, identifier_type, value, linked_type, linked_value = key
    return (event_id, now_ms, "", identifier_type, value, linked_type, linked_value, [], version, 1, now_ms)


def merge_key(values: Sequence[Any]) -> tuple:
    return (values[0], values[3])  # ReplacingMergeTree key: (event_id, absorbed_customer_id)


def conflict_key(values: Sequence[Any]) -> tuple:
    return (values[0], *values[3:7])  # (event_id, identifier, linked identifier)


def _write_identity(
    client: Store, reconstruction: Reconstruction, version: int, now: datetime
) -> tuple[set[tuple], set[tuple]]:
    """Write every identifier's customer and the identity logs; returns the merge and conflict keys."""
    graph, now_ms = reconstruction.graph, _ms(now)
    rows: list[tuple] = []
    for (identifier_type, value), customer in graph.iter_assignment():  # in chunks: millions at scale
        rows.append((identifier_type, value, customer, version, now_ms))
        if len(rows) >= STATE_CHUNK_ROWS:
            _insert(client, "identity_versions", IDENTITY_COLUMNS, rows)
            rows = []
    _insert(client, "identity_versions", IDENTITY_COLUMNS, rows)
    merges = [(*merge_values(m), version, 0, now_ms) for m in graph.merges]
    _insert(client, "identity_merge_versions", MERGE_COLUMNS, merges)
    conflicts = [(*conflict_values(c), version, 0, now_ms) for c in graph.conflicts]
    _insert(client, "identity_conflict_versions", CONFLICT_COLUMNS, conflicts)
    return {merge_key(row) for row in merges}, {conflict_key(row) for row in conflicts}


_MERGE_KEYS = "SELECT event_id, absorbed_customer_id FROM identity_merges"
_CONFLICT_KEYS = (
    "SELECT event_id, identifier_type, identifier_value, linked_type, linked_value FROM identity_conflicts"
)


def retire_missing(client: Store, journeys: set[str], merges: set[tuple], conflicts: set[tuple]) -> int:
    """Tombstone what ClickHouse shows that a complete state no longer has.

    After a complete state is written (an embedded run, or the snapshot a
    rebuilt stream reconstruct stage publishes), journeys not in `journeys` and
    identity merges and conflicts whose keys are not in `merges` / `conflicts`
    are gone: a rewrite re-keyed them, or, in the stream, the previous owner
    published customers that a link it did not live to publish has merged away.
    Returns the number of journeys deleted.
    """
    version, now = _clock.next(), datetime.now(UTC)
    now_ms = _ms(now)
    tombstones = _tombstones(
        client, _current_ids(client, "SELECT journey_id FROM journeys") - journeys, version, now
    )
    _insert(client, "journey_versions", JOURNEY_COLUMNS, tombstones)
    for table, columns, current, live, tombstone in (
        ("identity_merge_versions", MERGE_COLUMNS, _MERGE_KEYS, merges, _merge_tombstone),
        ("identity_conflict_versions", CONFLICT_COLUMNS, _CONFLICT_KEYS, conflicts, _conflict_tombstone),
    ):
        stale = sorted(_current_ids(client, current) - live)
        _insert(client, table, columns, [tombstone(key, version, now_ms) for key in stale])
    return len(tombstones)


# -- the stream sink: changes, not whole snapshots ----------------------------------


CustomerChanges = tuple[list[Sequence[Any]], list[Sequence[Any]], list[str], list[str]]
"""What the state topic says about one customer (`processors.stream.messages`): journey values,
touchpoint values, ids of journeys kept as stored, ids of the sent journeys sent in part."""


# The live journeys of some customers: the `journeys` view's rule (a journey's newest row is not a
# tombstone) without FINAL, so that it reads the projection by customer (migration 0007) and not
# every journey's row.
LIVE_JOURNEYS_OF = (
    "SELECT journey_id FROM journey_versions WHERE customer_id IN {ids:Array(String)} "
    "GROUP BY journey_id HAVING argMax(is_deleted, version) = 0"
)


def write_customer_journeys(client: Writer, customers: dict[str, CustomerChanges]) -> tuple[int, int]:
    """Write the changed journeys of these customers with their touchpoints; delete the ones that vanished.

    `customers` maps a customer id to (journey values, touchpoint values, kept
    journey ids, partial journey ids): the values as `journey_values` /
    `touchpoint_values` give them for the journeys that changed, the ids of the
    customer's journeys that did not change and stay as stored, and the ids of
    the changed journeys sent in part: their touchpoint values are only those
    that are new or placed anew, the others stay as stored, and their drop-off
    points are the stored ones and the new rows' (`_carry_points`). Any other
    stored journey of the customer is gone, so empty lists mean the customer no
    longer exists (absorbed by a merge). Returns (written, deleted).

    `customers` is in the order the snapshots were made. A touchpoint that moved
    between two of them (a merge) appears in both; all rows share one version, and
    ReplacingMergeTree would pick between equal versions by chance, so only its
    last placement is written.
    """
    if not customers:
        return 0, 0
    version, now = _clock.next(), datetime.now(UTC)
    now_ms = _ms(now)
    in_part = {journey_id for *_, ids in customers.values() for journey_id in ids}
    # A journey sent in part gets a row version of its own: the one its carried point rollup gets.
    carried_version = _clock.next() if in_part else version
    journey_rows = [
        (*values, carried_version if values[0] in in_part else version, 0, now_ms)
        for journeys, *_ in customers.values()
        for values in journeys
    ]
    last_placement = {values[0]: values for _, rows, *_ in customers.values() for values in rows}
    # By journey (column 2), so that each journey's touchpoints go out in one insert (`_insert_touchpoints`).
    tp_rows = sorted(((*values, version, now_ms) for values in last_placement.values()), key=itemgetter(2))
    current = {
        row[0] for row in client.query(LIVE_JOURNEYS_OF, parameters={"ids": sorted(customers)}).result_rows
    }
    kept = {journey_id for _, _, ids, _ in customers.values() for journey_id in ids}
    stale = current - {row[0] for row in journey_rows} - kept
    tombstones = _tombstones(client, stale, version, now)
    _insert_touchpoints(client, tp_rows)
    if in_part:
        unknown = in_part - current
        if unknown:
            # Their other touchpoints are not here (a database replaced under a running stream):
            # the journeys are written with what came, and the drop-off view counts only that.
            log.warning(
                "%d journeys came in part whose other rows this database does not hold, e.g. %s",
                len(unknown),
                min(unknown),
            )
        _carry_points(client, sorted(in_part), version, carried_version)
    _insert(client, "journey_versions", JOURNEY_COLUMNS, journey_rows + tombstones)
    return len(journey_rows), len(tombstones)


# The drop-off points of journeys sent in part: the points of their stored version (the version
# of their current row, read before the new row goes in) and of their new rows (`written`), as one
# rollup row of the new row's version (`carried`). `dropoff_points` (migration 0006) counts a
# journey's points from the one rollup row of its current version, so the carried points and the
# new ones must be in one row; the materialized view's row of the new touchpoints alone has an
# older version. Exact because a journey is sent in part only when its stored touchpoints all
# stay in it with their phase, so none of their points went away (`PublishedJourneys`).
_CARRY_POINTS = """
INSERT INTO journey_point_ids (journey_id, version, points, last_move)
SELECT
    r.journey_id,
    {carried:UInt64},
    (arrayFilter((point, seen) -> seen = j.version OR seen = {written:UInt64}, r.points.1, r.points.2)
        AS point_ids, arrayMap(point -> toUInt64({carried:UInt64}), point_ids)),
    if(r.last_move.1 = j.version OR r.last_move.1 = {written:UInt64},
        (toUInt64({carried:UInt64}), r.last_move.2, r.last_move.3), r.last_move)
FROM
(
    SELECT journey_id, maxMap(points) AS points, max(last_move) AS last_move
    FROM journey_point_ids
    WHERE journey_id IN {ids:Array(String)}
    GROUP BY journey_id
) AS r
LEFT JOIN
(
    SELECT journey_id, version FROM journey_versions FINAL
    WHERE journey_id IN {ids:Array(String)} AND is_deleted = 0
) AS j ON j.journey_id = r.journey_id
"""


def _carry_points(client: Writer, journey_ids: list[str], written: int, carried: int) -> None:
    """Roll the stored points of journeys sent in part and their new rows' points up at their new version."""
    client.command(_CARRY_POINTS, parameters={"ids": journey_ids, "written": written, "carried": carried})


# `journey_point_ids` from the stored rows, for when it is lost or was split (docs/schema.md, "How
# corrections appear"): every live journey's current touchpoints (their newest rows) at the journey's
# current version. Not the materialized view's query over every stored row: the touchpoints a journey
# sent in part did not resend keep the version they were written with, older than the journey's.
REBUILD_POINT_IDS = """
INSERT INTO journey_point_ids (journey_id, version, points, last_move)
SELECT
    t.journey_id,
    j.version,
    maxMap(([cityHash64(t.phase, t.channel, t.action, t.detail)], [j.version])),
    maxIf((j.version, t.seq, t.detail), t.is_passive = 0)
FROM touchpoint_versions AS t FINAL
INNER JOIN
(
    SELECT journey_id, version FROM journey_versions FINAL WHERE is_deleted = 0
) AS j ON j.journey_id = t.journey_id
GROUP BY t.journey_id, j.version
"""


def rebuild_point_ids(client: Client) -> None:
    """Empty `journey_point_ids` and fill it again from the stored journeys and touchpoints."""
    client.command("TRUNCATE TABLE journey_point_ids")
    client.command(REBUILD_POINT_IDS)


def _insert_touchpoints(client: Store, rows: list[tuple]) -> None:
    """Insert touchpoint rows grouped by journey in chunks that never split a journey.

    `journey_point_ids` (migrations 0005, 0006) is computed by a materialized view per
    inserted block; the drop-off view counts a journey once per point only when all
    the touchpoints of one journey version arrive in one block. ClickHouse squashes
    an insert into one block up to `min_insert_block_size_rows` (about 1M rows), so
    inserts of at most `STATE_CHUNK_ROWS` plus one journey keep each journey whole.
    """
    start = 0
    while start < len(rows):
        end = min(start + STATE_CHUNK_ROWS, len(rows))
        while end < len(rows) and rows[end][2] == rows[end - 1][2]:
            end += 1
        _insert(client, "touchpoint_versions", TOUCHPOINT_COLUMNS, rows[start:end])
        start = end


def write_identity_changes(
    client: Writer,
    identities: Iterable[Sequence[str]],
    merges_added: Iterable[Sequence[Any]] = (),
    merges_removed: Iterable[Sequence[Any]] = (),
    conflicts_added: Iterable[Sequence[Any]] = (),
    conflicts_removed: Iterable[Sequence[Any]] = (),
) -> None:
    """Upsert changed identifier assignments; apply identity-log changes (as `merge_values` gives them)."""
    version, now_ms = _clock.next(), _ms(datetime.now(UTC))
    _insert(client, "identity_versions", IDENTITY_COLUMNS, [(*row, version, now_ms) for row in identities])
    # A removed entry whose key is re-added (same event, other survivor) is replaced, not deleted:
    # a tombstone and a row with one key and one version would leave the winner to chance.
    merges = [(*values, version, 0, now_ms) for values in merges_added]
    kept = {merge_key(values) for values in merges_added}
    stale = {merge_key(values) for values in merges_removed} - kept
    merges += [_merge_tombstone(key, version, now_ms) for key in sorted(stale)]
    _insert(client, "identity_merge_versions", MERGE_COLUMNS, merges)
    conflicts = [(*values, version, 0, now_ms) for values in conflicts_added]
    kept = {conflict_key(values) for values in conflicts_added}
    stale = {conflict_key(values) for values in conflicts_removed} - kept
    conflicts += [_conflict_tombstone(key, version, now_ms) for key in sorted(stale)]
    _insert(client, "identity_conflict_versions", CONFLICT_COLUMNS, conflicts)


def write_run(client: Store, summary: Any, command: str) -> None:
    """Record a run's accounting (see processors.embedded.RunSummary)."""
    _insert(
        client,
        "runs",
        (
            "run_id",
            "command",
            "started_at",
            "finished_at",
            "inputs",
            "records_read",
            "touchpoints_new",
            "duplicates",
            "dead_letters",
            "journeys_written",
            "journeys_deleted",
            "watermark",
        ),
        [
            (
                summary.run_id,
                command,
                summary.started_at,
                summary.finished_at,
                summary.inputs,
                summary.records_read,
                summary.touchpoints_new,
                summary.duplicates,
                summary.dead_letters,
                summary.journeys_written,
                summary.journeys_deleted,
                summary.watermark,
            )
        ],
    )
