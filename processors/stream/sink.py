"""The ClickHouse sink: the state and dead-letter topics in, batched idempotent writes out.

It is its own consumer process (`journeys sink`) so that exactly one process
writes an embedded chDB database. The state topic has one partition (changes
must be applied in the order the reconstruct stage made them), so one sink
runs per deployment; a second one in the group stands by and takes over.

- **Batches** are bounded by message count, by bytes and by time, whichever
  comes first; the time counts from when the oldest pending message was
  produced, if the sink was busy writing then (`batch_began`).
- **At least once**: offsets are committed only after a batch is written. A
  redelivered batch rewrites the same rows (ReplacingMergeTree keyed on event,
  journey and identifier ids), so nothing is counted twice.
- **Back-pressure**: when ClickHouse fails, the batch is retried with
  exponential backoff and no further messages are polled until it is written;
  Kafka holds the rest.
- **Shutdown** (SIGTERM, SIGINT, or `idle_exit` seconds without messages):
  the pending batch is written and committed before the consumer leaves.
- **Snapshots**: a rebuilt reconstruct stage publishes its complete state
  between snapshot markers; at the end marker the sink deletes what the
  snapshot did not contain (customers the previous owner published that a
  merge it did not live to publish has absorbed).
"""

from __future__ import annotations

import gc
import logging
import signal
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson
from clickhouse_connect.driver.client import Client

from ingest.kafka import ensure_topics
from ingest.records import DeadLetter
from ingest.topics import Topics, received_at_of
from journeys.touchpoint import CompactTouchpoint
from processors.runtime import CollectorPause
from processors.sinks import clickhouse as tables
from processors.stream.messages import compact_from_object
from processors.stream.metrics import Metrics

log = logging.getLogger("journeys.sink")


@dataclass(frozen=True)
class SinkConfig:
    bootstrap: str
    topics: Topics = field(default_factory=Topics)
    group_id: str | None = None  # default: "<topic prefix>-sink", one group per deployment
    max_messages: int = 5000
    # A batch is written once its messages' raw bytes reach this (a poll may add one fetch more): decoded,
    # it takes about five times as much. Only a backlog comes near it (a steady stream writes a few MB).
    max_bytes: int = 64 * 1024 * 1024
    max_seconds: float = 1.0
    idle_exit: float | None = None  # stop after this many seconds without a message (replays, tests)
    metrics_port: int | None = 9109
    retry_initial: float = 0.5
    retry_max: float = 30.0
    session_timeout_ms: int = 10_000
    heartbeat_interval_ms: int = 3_000
    fetch_max_wait_ms: int = 100  # a broker that holds a fetch the full wait (Tansu) delays every batch
    # State messages are up to 256 KB: at kafka-python's default 1 MB a poll returns a handful, and a
    # backlog (written as soon as it is polled, `batch_began`) would go out in many small writes.
    max_partition_fetch_bytes: int = 16 * 1024 * 1024

    @property
    def group(self) -> str:
        """The consumer group: `group_id`, or "<topic prefix>-sink"."""
        return self.group_id or f"{self.topics.prefix}-sink"


@dataclass
class SinkSummary:
    messages: int = 0
    batches: int = 0
    events: int = 0
    journeys_written: int = 0
    journeys_deleted: int = 0
    dead_letters: int = 0
    retries: int = 0


def _header_text(headers: Iterable[tuple[str, bytes]] | None, name: str, default: str = "") -> str:
    for key, value in headers or ():
        if key == name and value is not None:
            return value.decode("utf-8", "replace")
    return default


def _latest_snapshot(
    customers: dict[str, tables.CustomerChanges],
    customer_id: str,
    journeys: list,
    touchpoints: list,
    kept: list | None = None,
    partial: list | None = None,
) -> None:
    """A later message about a customer supersedes its earlier one, and `customers` stays in message order.

    `kept` lists the customer's journeys the message leaves out because they did
    not change since the reconstruct stage last published them (None: the
    message carries every journey); `partial`, the journeys it carries in part
    (only their touchpoints that are new or placed anew). A kept journey that an
    earlier message of this segment changed is still written, from that
    message; one sent in part that an earlier message carried is written with
    the earlier message's touchpoints and then the later ones (so a touchpoint
    in both is written as placed last), whole if the earlier message had it
    whole; a journey the later message neither carries nor keeps is gone, and
    its earlier rows are not written. A touchpoint a merge moved to another
    customer is written where it went last (see `write_customer_journeys`).
    """
    earlier = customers.pop(customer_id, None)
    kept = list(kept or ())
    in_part = set(partial or ())
    if earlier is not None and (kept or in_part):
        earlier_journeys, earlier_touchpoints, _, earlier_in_part = earlier
        sent_before = {values[0] for values in earlier_journeys}
        carried, joined = sent_before & set(kept), sent_before & in_part
        if carried or joined:
            journeys = [values for values in earlier_journeys if values[0] in carried] + journeys
            touchpoints = [
                values for values in earlier_touchpoints if values[2] in carried or values[2] in joined
            ] + touchpoints
            kept = [journey_id for journey_id in kept if journey_id not in carried]
            # In part (onto what is stored) only if the earlier message did not send it whole.
            in_part = (in_part - joined) | ((carried | joined) & set(earlier_in_part))
    customers[customer_id] = (journeys, touchpoints, kept, sorted(in_part))


@dataclass
class Snapshot:
    """What a complete-state snapshot on the state topic contained so far (see `snapshot_messages`).

    `begin` is where its begin marker is (topic, partition, offset): the sink
    commits no further on that partition until the end marker, so a sink that
    restarts inside a snapshot reads it again from its beginning.
    """

    begin: tuple[str, int, int] | None = None
    journeys: set[str] = field(default_factory=set)
    merges: set[tuple] = field(default_factory=set)
    conflicts: set[tuple] = field(default_factory=set)


@dataclass
class SinkProgress:
    """What the sink carries from one batch to the next: a snapshot still being received."""

    snapshot: Snapshot | None = None


@dataclass
class _Segment:
    """Messages between two snapshot markers, written together."""

    events: list[CompactTouchpoint] = field(default_factory=list)
    letters: list[DeadLetter] = field(default_factory=list)
    customers: dict[str, tables.CustomerChanges] = field(default_factory=dict)
    # The identity messages as one change, written in one call: each identifier's last assignment,
    # and each merge or conflict (by its key) as the last message that named it left it.
    identities: dict[tuple[str, str], tuple[str, str, str]] = field(default_factory=dict)
    merges: dict[tuple, tuple[bool, Sequence[Any]]] = field(default_factory=dict)  # key: (added, values)
    conflicts: dict[tuple, tuple[bool, Sequence[Any]]] = field(default_factory=dict)

    def add_identity(self, message: dict[str, Any]) -> None:
        """Fold one identity message in; a malformed one raises before it changes anything."""
        identities = [(t, v, customer) for t, v, customer in message.get("identities", [])]
        logs = [
            (log, [(key(values), added, values) for added, values in entries])
            for log, key, entries in (
                (self.merges, tables.merge_key, _log_entries(message, "merges")),
                (self.conflicts, tables.conflict_key, _log_entries(message, "conflicts")),
            )
        ]
        self.identities.update(((t, v), (t, v, customer)) for t, v, customer in identities)
        for log, changes in logs:
            for key, added, values in changes:
                log[key] = (added, values)

    def write_identity(self, client: tables.Writer) -> None:
        if not (self.identities or self.merges or self.conflicts):
            return
        tables.write_identity_changes(
            client,
            list(self.identities.values()),
            [values for added, values in self.merges.values() if added],
            [values for added, values in self.merges.values() if not added],
            [values for added, values in self.conflicts.values() if added],
            [values for added, values in self.conflicts.values() if not added],
        )


def _log_entries(message: dict[str, Any], log: str) -> list[tuple[bool, Sequence[Any]]]:
    """A message's removed then added entries of one identity log: an entry removed and added again
    in one message (same event, another survivor) is replaced, not deleted."""
    return [(False, values) for values in message.get(f"{log}_removed", [])] + [
        (True, values) for values in message.get(f"{log}_added", [])
    ]


class PendingBatch:
    """State and dead-letter records decoded as they are polled, into the writes they make.

    Decoding a state message costs a good part of writing it (29% of the
    sink's write time in a profiled latency run); done as the records arrive,
    it runs while the batch waits out its `max_seconds`, not after. A
    snapshot's end marker closes a segment: at write time what came before it
    is written, then what the snapshot did not contain is deleted, then the
    rest. Decoding moves `progress` on at once (a snapshot begun or ended), so
    a write that failed is retried with the same segments, not decoded again.
    """

    def __init__(self, topics: Topics, progress: SinkProgress) -> None:
        self.topics = topics
        self.progress = progress
        self.messages = 0
        self.bytes = 0  # raw message bytes decoded into the batch
        self._segment = _Segment()
        # Segments ended by a snapshot's end marker, each with that snapshot (None: its begin was not seen).
        self._closed: list[tuple[_Segment, Snapshot | None]] = []

    def __len__(self) -> int:
        return self.messages

    def add(self, records: Sequence[Any], max_bytes: int | None = None) -> int:
        """Decode records (each partition's in offset order); returns how many were taken.

        Stops after the record that brings the batch to `max_bytes` (the rest
        wait for the next batch). A poison message becomes a dead letter.
        """
        taken = 0
        for record in records:
            if max_bytes is not None and self.bytes >= max_bytes:
                break
            taken += 1
            self.messages += 1
            self.bytes += len(record.value or b"")
            if record.topic == self.topics.dead_letters:
                self._segment.letters.append(_dead_letter(record))
                continue
            try:
                self._add_state(record)
            except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
                # A poison message must not stall the partition: it becomes a dead letter.
                self._segment.letters.append(
                    DeadLetter(
                        raw=record.value or b"",
                        reason=f"unreadable state message: {type(exc).__name__}: {str(exc)[:200]}",
                        format="state",
                        origin=f"{record.topic}[{record.partition}]@{record.offset}",
                        received_at=datetime.now(UTC),
                    )
                )
        return taken

    def _add_state(self, record: Any) -> None:
        segment, snapshot = self._segment, self.progress.snapshot
        message = orjson.loads(record.value)
        kind = message.get("kind")
        if kind == "events":
            segment.events.extend(compact_from_object(raw) for raw in message["events"])
        elif kind == "identity":
            segment.add_identity(message)
            if snapshot is not None:
                snapshot.merges.update(tables.merge_key(m) for m in message.get("merges_added", []))
                snapshot.conflicts.update(tables.conflict_key(c) for c in message.get("conflicts_added", []))
        elif kind in ("customers", "customer"):
            # "customer": the one-customer form of earlier versions
            packed = (
                message["customers"]
                if kind == "customers"
                else [(message["customer_id"], message["journeys"], message["touchpoints"])]
            )
            for customer_id, journeys, touchpoints, *kept in packed:  # then `partial`, if sent
                _latest_snapshot(segment.customers, customer_id, journeys, touchpoints, *kept)
                if snapshot is not None:
                    snapshot.journeys.update(values[0] for values in journeys)
                    snapshot.journeys.update(*kept[:1])
        elif kind == "snapshot":
            phase = message["phase"]
            if phase == "begin":
                self.progress.snapshot = Snapshot(begin=(record.topic, record.partition, record.offset))
            elif phase == "end":
                if snapshot is None:
                    log.warning("a snapshot ended whose beginning this sink did not see; nothing retired")
                self._closed.append((segment, snapshot))
                self._segment = _Segment()
                self.progress.snapshot = None
            else:
                raise ValueError(f"unknown snapshot phase {phase!r}")
        else:
            raise ValueError(f"unknown kind {kind!r}")

    def write(self, client: tables.Writer, summary: SinkSummary) -> None:
        """Write the batch to ClickHouse, segment by segment; safe to call again after a failure."""
        for segment, snapshot in self._closed:
            _write_segment(client, segment, summary)
            if snapshot is not None:
                summary.journeys_deleted += tables.retire_missing(
                    client, snapshot.journeys, snapshot.merges, snapshot.conflicts
                )
        _write_segment(client, self._segment, summary)


def _dead_letter(record: Any) -> DeadLetter:
    """A record of the dead-letter topic, as the stage that refused it described it in its headers."""
    headers = record.headers
    return DeadLetter(
        raw=record.value or b"",
        reason=_header_text(headers, "reason", "no reason given"),
        format=_header_text(headers, "format", "unknown"),
        origin=_header_text(headers, "origin", f"{record.topic}[{record.partition}]@{record.offset}"),
        received_at=received_at_of(headers) or datetime.now(UTC),
    )


def _write_segment(client: tables.Writer, segment: _Segment, summary: SinkSummary) -> None:
    if segment.events:
        summary.events += tables.write_events(client, segment.events)
    if segment.letters:
        summary.dead_letters += tables.write_dead_letters(client, segment.letters, "stream")
    segment.write_identity(client)
    written, deleted = tables.write_customer_journeys(client, segment.customers)
    summary.journeys_written += written
    summary.journeys_deleted += deleted


class _MetricsHandler(BaseHTTPRequestHandler):
    metrics: Metrics

    def do_GET(self) -> None:
        if self.path != "/metrics":
            self.send_error(404)
            return
        body = self.metrics.render().encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        return


def serve_metrics(metrics: Metrics, port: int) -> ThreadingHTTPServer:
    handler = type("Handler", (_MetricsHandler,), {"metrics": metrics})
    server = ThreadingHTTPServer(("0.0.0.0", port), handler)
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    return server


def run_sink(
    connect: Callable[[], Client],
    config: SinkConfig,
    *,
    stop: threading.Event | None = None,
    metrics: Metrics | None = None,
) -> SinkSummary:
    """Consume until stopped; returns what was written."""
    from kafka import KafkaConsumer

    stop = stop or threading.Event()
    metrics = metrics or Metrics()
    summary = SinkSummary()
    own_process = threading.current_thread() is threading.main_thread()
    if own_process:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: stop.set())
    server = serve_metrics(metrics, config.metrics_port) if config.metrics_port is not None else None
    consumer = KafkaConsumer(
        bootstrap_servers=config.bootstrap,
        group_id=config.group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=config.max_messages,
        session_timeout_ms=config.session_timeout_ms,
        heartbeat_interval_ms=config.heartbeat_interval_ms,
        fetch_max_wait_ms=config.fetch_max_wait_ms,
        max_partition_fetch_bytes=config.max_partition_fetch_bytes,
    )
    ensure_topics(config.bootstrap, config.topics)
    consumer.subscribe([config.topics.state, config.topics.dead_letters])
    client = tables.InsertContexts(connect())
    if own_process:
        gc.freeze()  # the start-up objects (modules, client, consumer) out of every collection's scan
    collector = CollectorPause()  # paused while a batch is held: its decoded messages hold no cycles
    progress = SinkProgress()
    pending = PendingBatch(config.topics, progress)
    started = time.time()  # when the pending batch began to wait (wall clock: records carry theirs)
    busy_since: float | None = None  # when the last write began
    last_message = time.monotonic()
    lag_recorded = -LAG_EVERY  # the first write records it
    # Records polled but not yet in a batch: the byte bound closed the batch before them. The next
    # batch takes them before anything is polled again, and no offset is committed past them.
    unbatched: list[Any] = []
    try:
        while True:
            if not unbatched:
                waited = time.time() - started
                timeout = max(0.0, config.max_seconds - waited) if pending else config.max_seconds
                polled = consumer.poll(
                    timeout_ms=int(timeout * 1000), max_records=config.max_messages - len(pending)
                )
                unbatched = [record for records in polled.values() for record in records]
                if polled or not consumer.assignment():
                    # Idle time counts from the group join: joining alone can take seconds.
                    last_message = time.monotonic()
            if unbatched and not pending:
                started = batch_began(time.time(), unbatched, busy_since)
                collector.pause()
            del unbatched[: pending.add(unbatched, config.max_bytes)]
            due = (
                len(pending) >= config.max_messages
                or pending.bytes >= config.max_bytes
                or (pending and time.time() - started >= config.max_seconds)
            )
            stopping = stop.is_set() or (
                config.idle_exit is not None and time.monotonic() - last_message >= config.idle_exit
            )
            if pending and (due or stopping):
                busy_since = time.time()
                _write_with_retries(client, pending, config, summary, metrics, stop)
                consumer.commit(offsets=_commit_offsets(consumer, progress, unbatched))
                pending = PendingBatch(config.topics, progress)
                collector.resume()
                if time.monotonic() - lag_recorded >= LAG_EVERY:
                    _record_lag(consumer, metrics)
                    lag_recorded = time.monotonic()
            if stopping and not unbatched:
                break
    finally:
        collector.resume()
        consumer.close()
        if server is not None:
            server.shutdown()
    return summary


def batch_began(polled_at: float, records: Iterable[Any], busy_since: float | None) -> float:
    """When a batch whose first records were polled at `polled_at` began to wait, for `max_seconds`.

    Records produced while the sink was writing the previous batch (since
    `busy_since`) have waited since they were produced: counting their wait from
    the poll instead would hold each of them back by up to `max_seconds` more
    whenever writes take longer than the wait, as under a steady stream. Records
    from before the last write began (a backlog) count from when it began; before
    any write, and for a producer whose clock runs ahead, from the poll. Record
    timestamps are the producer's create times in ms (none: -1 or None).
    """
    if busy_since is None:
        return polled_at
    produced = [record.timestamp for record in records if (record.timestamp or 0) > 0]
    if not produced:
        return polled_at
    return min(polled_at, max(min(produced) / 1000, busy_since))


def _write_with_retries(
    client: tables.InsertContexts,
    batch: PendingBatch,
    config: SinkConfig,
    summary: SinkSummary,
    metrics: Metrics,
    stop: Any,
) -> None:
    delay = config.retry_initial
    while True:
        began = time.monotonic()
        try:
            batch.write(client, summary)
        except Exception as exc:  # ClickHouse down, slow or refusing: hold the batch and retry
            client.forget()  # a context of the failed insert may be half used; the retry makes new ones
            summary.retries += 1
            metrics.inc("journeys_sink_retries_total")
            log.warning("ClickHouse write failed (%s); retrying in %.1f s", type(exc).__name__, delay)
            if stop.wait(delay) and summary.retries > 3:
                raise RuntimeError("stopping with an unwritten batch; its offsets stay uncommitted") from exc
            delay = min(delay * 2, config.retry_max)
            continue
        took = time.monotonic() - began
        log.info("wrote %d messages in %.2f s", len(batch), took, extra={"messages": len(batch)})
        summary.batches += 1
        summary.messages += len(batch)
        metrics.inc("journeys_sink_batches_total")
        metrics.set("journeys_sink_batch_size", len(batch))
        metrics.set("journeys_sink_batch_seconds", took)
        metrics.inc("journeys_records_in_total", len(batch), stage="sink")
        return


def _commit_offsets(consumer: Any, progress: SinkProgress, unbatched: Sequence[Any] = ()) -> dict[Any, Any]:
    """What the sink has written, per assigned partition: no further than a record polled but not yet
    written (`unbatched`), and inside a snapshot, no further than its begin."""
    from kafka import TopicPartition
    from kafka.structs import OffsetAndMetadata

    offsets = {tp: OffsetAndMetadata(consumer.position(tp), "", -1) for tp in consumer.assignment()}
    for record in reversed(unbatched):  # each partition's first unwritten record wins
        offsets[TopicPartition(record.topic, record.partition)] = OffsetAndMetadata(record.offset, "", -1)
    begin = progress.snapshot.begin if progress.snapshot is not None else None
    if begin is not None:
        topic, partition, offset = begin
        offsets[TopicPartition(topic, partition)] = OffsetAndMetadata(offset, "", -1)
    return offsets


# Seconds between lag readings: each asks the broker for the end offsets and waits for the
# consumer's network thread (5 % of the sink's samples when read after every write of a backlog).
LAG_EVERY = 5.0


def _record_lag(consumer: Any, metrics: Metrics) -> None:
    assignment = consumer.assignment()
    if not assignment:
        return
    for tp, end in consumer.end_offsets(list(assignment)).items():
        metrics.set(
            "journeys_consumer_lag",
            max(0, end - consumer.position(tp)),
            topic=tp.topic,
            partition=str(tp.partition),
        )
