"""The stream stack against a real broker: the same events give the same rows as `journeys run`.

A Tansu broker (real Kafka protocol) is started by the session fixture, the
workers run as real `journeys worker` processes, and the sink runs here (the
only process writing this test session's chDB path).
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import orjson
import pytest
from aiohttp.test_utils import TestClient
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import OperationalError
from kafka import KafkaConsumer, TopicPartition
from kafka.admin import KafkaAdminClient
from kafka.coordinator.assignors.range import RangePartitionAssignor
from kafka.structs import OffsetAndMetadata
from webhooks import JSON, WRITE_KEY, Call, basic, sendgrid_signed, serve, twilio_signed

from ingest.demo import generate
from ingest.files import read_records
from ingest.kafka import ensure_topics, make_producer
from ingest.pii import PiiHasher
from ingest.producer import ProduceSummary, produce_files, produce_records, records_in_event_time
from ingest.records import RawRecord
from ingest.topics import Topics
from processors.bench.stream import worker_context
from processors.config import Settings
from processors.embedded import RunSummary, expand_inputs, run
from processors.storage import connect, migrate
from processors.stream.metrics import Metrics, parse_metrics
from processors.stream.sink import SinkConfig, run_sink

pytestmark = pytest.mark.slow
JOURNEYS = str(Path(sys.executable).with_name("journeys"))
# Faust's default group timeouts make the first join take ~30 s on this broker.
FAST_GROUP = ["--session-timeout", "6", "--heartbeat-interval", "1", "--rebalance-timeout", "6"]

# Columns that record when or how far processing had got, not what happened (docs/stream.md).
INGEST_TIME_COLUMNS = {
    "touchpoints": {"received_at"},
    "events": {"received_at", "ingested_at"},
    "journeys": {"watermark"},
    "dead_letters": {"received_at", "run_id"},
}
# The event log is a table, not a view: an event written again (a redelivered or replayed state
# message) is a second row until ReplacingMergeTree merges it away; FINAL reads the merged result.
READ_FINAL = {"events"}


@pytest.fixture
def stream_env(kafka_bootstrap: str, topic_prefix: str, tmp_path: Path, pii_key: str) -> dict[str, str]:
    env = dict(os.environ)
    env |= {
        "JOURNEYS_TOPIC_PREFIX": topic_prefix,
        "JOURNEYS_PII_KEY": pii_key,
        "JOURNEYS_KAFKA": kafka_bootstrap,
    }
    env.pop("JOURNEYS_DB", None)
    return env


@pytest.fixture
def start_worker(stream_env: dict[str, str], tmp_path: Path) -> Iterator[Callable[[str], subprocess.Popen]]:
    workers: list[subprocess.Popen] = []

    def start(
        name: str,
        metrics_port: int = 0,
        bootstrap: str | None = None,
        extra: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
    ) -> subprocess.Popen:
        log = (tmp_path / f"{name}.log").open("wb")
        process = subprocess.Popen(
            [
                JOURNEYS,
                "worker",
                *FAST_GROUP,
                "--metrics-port",
                str(metrics_port),
                "--data-dir",
                str(tmp_path / name),
                "--log-format",
                "json",
                *(["--kafka", bootstrap] if bootstrap else []),
                *extra,
            ],
            env=stream_env | (env or {}),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        workers.append(process)
        return process

    yield start
    for process in workers:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in workers:
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()


class SinkThread:
    """The ClickHouse sink consuming in this process until stopped.

    `around` wraps the real client the sink writes through (a fault harness);
    `config` overrides `SinkConfig` fields (the retry delays, say).
    """

    def __init__(
        self,
        dsn: str,
        bootstrap: str,
        topics: Topics,
        metrics_port: int | None = None,
        *,
        around: Callable[[Client], Any] = lambda client: client,
        **config: Any,
    ) -> None:
        self.dsn = dsn
        self.around = around
        self.stop = threading.Event()
        self.metrics = Metrics()
        self.error: BaseException | None = None
        settings = {"max_seconds": 0.5, "session_timeout_ms": 6000, "heartbeat_interval_ms": 1000, **config}
        sink_config = SinkConfig(bootstrap=bootstrap, topics=topics, metrics_port=metrics_port, **settings)
        self.group = sink_config.group
        self.topics = topics
        self.thread = threading.Thread(target=self._run, args=(sink_config,), daemon=True)
        self.thread.start()

    def _run(self, config: SinkConfig) -> None:
        try:
            self.summary = run_sink(
                lambda: self.around(connect(self.dsn)), config, stop=self.stop, metrics=self.metrics
            )
        except BaseException as exc:  # surfaced by join()
            self.error = exc

    def join(self) -> None:
        self.stop.set()
        self.thread.join(timeout=60)
        if self.error is not None:
            raise self.error

    def __enter__(self) -> SinkThread:
        return self

    def __exit__(self, failed: type[BaseException] | None, *_: object) -> None:
        """Stops the sink; while a failure propagates, how the sink stopped is not raised over it."""
        try:
            self.join()
        except Exception:
            if failed is None:
                raise


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def scrape(port: int) -> dict[str, float]:
    """A Prometheus text page as {series: value}."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return parse_metrics(response.read().decode())


def rows(dsn: str, query: str) -> list[tuple]:
    return connect(dsn).query(query).result_rows


def count(dsn: str, query: str) -> int:
    return rows(dsn, query)[0][0]


def wait_until(condition: Callable[[], bool], timeout: float, what: str, logs: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.5)
    detail = ""
    if logs is not None:
        detail = "\n".join(p.read_text(errors="replace")[-3000:] for p in sorted(logs.glob("*.log")))
    raise AssertionError(f"timed out waiting for {what}\n{detail}")


def settled(dsn: str, expected_events: int) -> Callable[[], bool]:
    """All events stored and the journeys unchanged for two seconds."""
    last: list[tuple] = []

    def check() -> bool:
        if count(dsn, "SELECT count() FROM events") < expected_events:
            return False
        now = connect(dsn).query("SELECT count(), max(written_at) FROM journey_versions").result_rows[0]
        if last and last[-1] == now and time.monotonic() - last[-2] >= 2:  # type: ignore[operator]
            return True
        if not last or last[-1] != now:
            last[:] = [time.monotonic(), now]
        return False

    return check


def rows_of(dsn: str, table: str, order_by: str) -> list[tuple]:
    """A view's rows (the event log's as merged) without their ingest-time columns."""
    client = connect(dsn)
    excluded = INGEST_TIME_COLUMNS.get(table, set())
    columns = [c for c in client.query(f"SELECT * FROM {table} LIMIT 0").column_names if c not in excluded]
    source = f"{table} FINAL" if table in READ_FINAL else table
    return client.query(f"SELECT {', '.join(columns)} FROM {source} ORDER BY {order_by}").result_rows


def assert_stream_matches_embedded(
    tmp_path: Path,
    bootstrap: str,
    topics: Topics,
    pii_key: str,
    start_worker: Callable,
    embedded_dsn: str,
    streamed_dsn: str,
) -> None:
    """The demo dataset through produce -> worker -> sink gives the embedded run's rows."""
    files = generate(customers=80, seed=5, days=40).write(tmp_path / "demo")
    inputs = expand_inputs([*files.inputs()])
    summary = run(inputs, Settings(dsn=embedded_dsn))
    assert summary.accounted and summary.dead_letters > 0

    produced = produce_files(inputs, bootstrap, topics, PiiHasher(pii_key))
    assert produced.records == sum(1 for path in inputs for _ in read_records(path)) and not produced.failed
    migrate(connect(streamed_dsn))
    sink = SinkThread(streamed_dsn, bootstrap, topics)
    start_worker("w1", bootstrap=bootstrap)
    try:
        wait_until(settled(streamed_dsn, summary.touchpoints_new), 180, "the stream to settle", tmp_path)
    finally:
        sink.join()

    for table, order_by in (
        ("touchpoints", "event_id"),
        ("journeys", "journey_id"),
        ("events", "event_id"),
        ("identities", "identifier_type, identifier_value"),
        ("identity_merges", "event_id, absorbed_customer_id"),
        ("identity_conflicts", "event_id"),
        # The rollup views: the sink writes many versions of a journey, the embedded run one.
        ("path_variants", "status, path"),
        ("moments_of_truth", "channel, action"),
    ):
        assert rows_of(streamed_dsn, table, order_by) == rows_of(embedded_dsn, table, order_by), table
    # did_just_before aside: topK picks among equally frequent moves by chance.
    dropoff = (
        "SELECT phase, channel, action, detail, dropped_journeys, journeys_passing FROM dropoff_points "
        "ORDER BY phase, channel, action, detail"
    )
    left = rows(streamed_dsn, dropoff)
    assert left and left == rows(embedded_dsn, dropoff)
    dead_letters = "SELECT reason, format FROM dead_letters ORDER BY reason, format"
    assert rows(streamed_dsn, dead_letters) == rows(embedded_dsn, dead_letters)
    print(f"figures: {produced.records} raw records, {summary.touchpoints_new} events streamed")


def test_stream_gives_the_same_rows_as_the_embedded_run(
    tmp_path: Path,
    chdb_path: Path,
    kafka_bootstrap: str,
    topic_prefix: str,
    pii_key: str,
    start_worker: Callable,
) -> None:
    database = topic_prefix.replace("-", "_")
    assert_stream_matches_embedded(
        tmp_path,
        kafka_bootstrap,
        Topics(topic_prefix),
        pii_key,
        start_worker,
        embedded_dsn=f"chdb://{chdb_path}?database={database}_embedded",
        streamed_dsn=f"chdb://{chdb_path}?database={database}_stream",
    )


def test_stream_on_apache_kafka_and_a_clickhouse_server(
    tmp_path: Path,
    chdb_path: Path,
    docker_services: tuple[str, str],
    topic_prefix: str,
    pii_key: str,
    start_worker: Callable,
) -> None:
    """The same check against the server images (testcontainers); skipped where no Docker engine runs."""
    bootstrap, clickhouse_dsn = docker_services
    assert_stream_matches_embedded(
        tmp_path,
        bootstrap,
        Topics(topic_prefix),
        pii_key,
        start_worker,
        embedded_dsn=f"chdb://{chdb_path}?database={topic_prefix.replace('-', '_')}_embedded",
        streamed_dsn=clickhouse_dsn,
    )


def owner_of_reconstruct(logs: dict[str, Path], topics: Topics) -> str | None:
    """The worker whose latest assignment holds the touchpoints partition (it logs each assignment)."""
    owner = None
    marker = f"{topics.touchpoints}[0]"
    latest: dict[str, str] = {}
    for name, path in logs.items():
        lines = [
            line for line in path.read_text(errors="replace").splitlines() if "assigned partitions:" in line
        ]
        if lines:
            latest[name] = lines[-1]
    for name, line in latest.items():
        if marker in line:
            owner = name
    return owner


def assigned_raw_partitions(log: Path, topics: Topics) -> set[str]:
    lines = [line for line in log.read_text(errors="replace").splitlines() if "assigned partitions:" in line]
    if not lines:
        return set()
    names = lines[-1].split("assigned partitions:", 1)[1].strip().split(", ")
    return {name for name in names if name.startswith(f"{topics.prefix}.raw.")}


def reference_run(
    tmp_path: Path, chdb_path: Path, topic_prefix: str, seed: int
) -> tuple[Settings, RunSummary, list[RawRecord], str]:
    """A demo reconstructed by one embedded run (what the stream must equal): its settings, summary,
    the demo's raw records to stream, and the DSN of the stream's own database."""
    inputs = expand_inputs([*generate(customers=60, seed=seed, days=40).write(tmp_path / "demo").inputs()])
    database = topic_prefix.replace("-", "_")
    embedded = Settings(dsn=f"chdb://{chdb_path}?database={database}_embedded")
    summary = run(inputs, embedded)
    records = [record for path in inputs for record in read_records(path)]
    return embedded, summary, records, f"chdb://{chdb_path}?database={database}_stream"


# What the fault tests compare with the embedded run: every customer's touchpoints, journeys and identities.
STATE = (("touchpoints", "event_id"), ("journeys", "journey_id"), ("identities", "1, 2"))


def assert_same_state(streamed: str, embedded: str, summary: RunSummary, note: object = None) -> None:
    """No loss, no double count: the stream stored the embedded run's rows, each touchpoint once."""
    for table, order_by in STATE:
        assert rows_of(streamed, table, order_by) == rows_of(embedded, table, order_by), (table, note)
    assert count(streamed, "SELECT count() FROM touchpoints") == summary.touchpoints_new, note


def test_two_workers_share_the_work_and_one_takes_over_when_the_other_is_killed(
    tmp_path: Path,
    chdb_path: Path,
    fresh_kafka: str,
    topic_prefix: str,
    pii_key: str,
    start_worker: Callable,
) -> None:
    kafka_bootstrap = fresh_kafka
    embedded, summary, records, streamed = reference_run(tmp_path, chdb_path, topic_prefix, seed=11)
    first, rest = records[: len(records) // 2], records[len(records) // 2 :]

    topics = Topics(topic_prefix)
    ensure_topics(kafka_bootstrap, topics, partitions=4)
    migrate(connect(streamed))
    sink = SinkThread(streamed, kafka_bootstrap, topics)
    workers = {name: start_worker(name, bootstrap=kafka_bootstrap) for name in ("w1", "w2")}
    logs = {name: tmp_path / f"{name}.log" for name in workers}
    try:
        send(kafka_bootstrap, topics, first, pii_key)
        wait_until(
            lambda: (
                all(assigned_raw_partitions(log, topics) for log in logs.values())
                and owner_of_reconstruct(logs, topics) is not None
            ),
            180,  # two group joins and a rebalance: ~20 s alone, several times that on a loaded machine
            "both workers to hold partitions",
            tmp_path,
        )
        # The group shares the raw partitions: neither worker holds them all.
        shares = [assigned_raw_partitions(log, topics) for log in logs.values()]
        assert not shares[0] & shares[1] and len(shares[0] | shares[1]) == 16
        wait_until(
            lambda: count(streamed, "SELECT count() FROM events") > 0, 90, "the first events", tmp_path
        )

        victim = owner_of_reconstruct(logs, topics)
        assert victim is not None
        survivor = next(name for name in workers if name != victim)
        workers[victim].kill()  # no graceful shutdown: state must come back from the changelog
        workers[victim].wait(timeout=10)
        send(kafka_bootstrap, topics, rest, pii_key)
        try:
            wait_until(settled(streamed, summary.touchpoints_new), 180, "the survivor to catch up", tmp_path)
        except AssertionError as timeout:
            raise AssertionError(
                explain_missing(streamed, embedded.dsn, kafka_bootstrap, topics)
            ) from timeout
        assert owner_of_reconstruct({survivor: logs[survivor]}, topics) == survivor
        assert "rebuilt from" in logs[survivor].read_text(errors="replace")
    finally:
        sink.join()

    # No loss, no double count: the same rows as one embedded run over all the events.
    assert_same_state(streamed, embedded.dsn, summary)
    print(f"figures: {len(records)} raw records, {summary.touchpoints_new} events streamed; 1 worker killed")


CRASHES = 3
# The moments are random but replayable: a failure names its seed; JOURNEYS_CRASH_SEED tries others.
CRASH_SEED = int(os.environ.get("JOURNEYS_CRASH_SEED", "20261129"))


@pytest.mark.slow
def test_a_worker_killed_at_random_moments_and_restarted_loses_and_doubles_nothing(
    tmp_path: Path,
    chdb_path: Path,
    fresh_kafka: str,
    topic_prefix: str,
    pii_key: str,
    start_worker: Callable,
) -> None:
    """The events stream in parts; after each part the only worker is killed (SIGKILL) at a random
    moment — while joining, restoring, normalising or folding — and started again. The end state
    equals one embedded run of the same events."""
    kafka_bootstrap, rng = fresh_kafka, random.Random(CRASH_SEED)
    embedded, summary, records, streamed = reference_run(tmp_path, chdb_path, topic_prefix, seed=13)
    rng.shuffle(records)  # parts mix channels, so every part moves several raw partitions
    parts = [records[i :: CRASHES + 1] for i in range(CRASHES + 1)]

    topics = Topics(topic_prefix)
    ensure_topics(kafka_bootstrap, topics, partitions=4)
    migrate(connect(streamed))
    sink = SinkThread(streamed, kafka_bootstrap, topics)
    worker = start_worker("w0", bootstrap=kafka_bootstrap)
    moments = []
    try:
        for crash, part in enumerate(parts):
            send(kafka_bootstrap, topics, part, pii_key)
            if crash == CRASHES:
                break
            moments.append(round(rng.uniform(0.5, 8.0), 2))
            time.sleep(moments[-1])
            worker.kill()
            worker.wait(timeout=10)
            worker = start_worker(f"w{crash + 1}", bootstrap=kafka_bootstrap)
        try:
            wait_until(settled(streamed, summary.touchpoints_new), 240, "the restarted worker", tmp_path)
        except AssertionError as timeout:
            raise AssertionError(
                f"kills at {moments} s (seed {CRASH_SEED}): "
                + explain_missing(streamed, embedded.dsn, kafka_bootstrap, topics)
            ) from timeout
    finally:
        sink.join()

    assert_same_state(streamed, embedded.dsn, summary, moments)
    print(
        f"figures: {len(records)} raw records, {summary.touchpoints_new} events streamed; "
        f"SIGKILL {moments} s after each part"
    )


def explain_missing(streamed: str, embedded: str, bootstrap: str, topics: Topics) -> str:
    """The events that never arrived, and whether their raw records are on the broker at all."""
    missing = sorted(event_ids(embedded) - event_ids(streamed))
    consumer = KafkaConsumer(
        *topics.all_raw, bootstrap_servers=bootstrap, auto_offset_reset="earliest", consumer_timeout_ms=3000
    )
    on_broker = {}
    for message in consumer:
        for event_id in missing:
            stem = event_id.split(":", 1)[0].encode()
            if stem in (message.value or b""):
                on_broker.setdefault(event_id, []).append(
                    f"{message.topic}[{message.partition}]@{message.offset}"
                )
    consumer.close()
    return f"missing events {missing}; raw records on the broker: {on_broker}"


def send(bootstrap: str, topics: Topics, records: list, pii_key: str) -> None:
    producer = make_producer(bootstrap)
    result = ProduceSummary()
    produce_records(records, producer, topics, PiiHasher(pii_key), result)
    producer.flush()
    producer.close()
    assert result.failed == 0


def test_a_poison_record_is_dead_lettered_and_its_partition_keeps_moving(
    tmp_path: Path, chdb_path: Path, kafka_bootstrap: str, topic_prefix: str, start_worker: Callable
) -> None:
    topics = Topics(topic_prefix)
    ensure_topics(kafka_bootstrap, topics, partitions=1)
    producer = make_producer(bootstrap=kafka_bootstrap)
    web = topics.raw("web")
    track = orjson.dumps(
        {
            "type": "track",
            "event": "Product Viewed",
            "messageId": "after-poison",
            "anonymousId": "a-77",
            "timestamp": "2026-09-01T10:00:00Z",
            "properties": {},
        }
    )
    # One partition each, so every poison sits in front of the valid record.
    producer.send(web, value=b"\xff\xfe not json", headers=[("format", b"segment")])
    producer.send(topics.touchpoints, key=b"junk", value=b'{"event_id": "x"}')
    producer.send(topics.state, key=b"junk", value=b"[not a state message")
    producer.send(web, value=track, headers=[("format", b"segment")])
    producer.flush()
    producer.close()

    dsn = migrated_dsn(chdb_path, topic_prefix)
    worker_port, sink_port = free_port(), free_port()
    sink = SinkThread(dsn, kafka_bootstrap, topics, metrics_port=sink_port)
    start_worker("w1", metrics_port=worker_port)
    try:
        wait_until(
            lambda: (
                count(dsn, "SELECT count() FROM touchpoints WHERE event_id = 'after-poison'") == 1
                and count(dsn, "SELECT count() FROM dead_letters") >= 3
            ),
            120,
            "the valid record behind the poison ones",
            tmp_path,
        )
        worker_metrics = scrape(worker_port)
        sink_metrics = scrape(sink_port)
    finally:
        sink.join()
    assert worker_metrics['journeys_dead_letters_total{stage="normalise"}'] == 1
    assert worker_metrics['journeys_dead_letters_total{stage="reconstruct"}'] == 1
    assert worker_metrics['journeys_records_in_total{stage="normalise"}'] == 2
    assert worker_metrics["journeys_open_journeys"] == 1
    assert worker_metrics['journeys_published_journeys_total{how="new"}'] == 1
    assert worker_metrics['journeys_published_journeys_total{how="whole"}'] == 0
    assert worker_metrics["journeys_published_touchpoint_rows_total"] == 1
    assert sink_metrics["journeys_sink_batches_total"] >= 1 and "journeys_sink_batch_seconds" in sink_metrics
    assert any(name.startswith("journeys_consumer_lag{") for name in sink_metrics)
    reasons = dict(connect(dsn).query("SELECT format, reason FROM dead_letters").result_rows)
    assert reasons["segment"].startswith("malformed JSON")
    assert reasons["touchpoint"].startswith("not a canonical touchpoint")
    assert reasons["state"].startswith("unreadable state message")


def demo_in_event_time(tmp_path: Path, pii_key: str, customers: int, seed: int, days: int) -> list[RawRecord]:
    """A demo's raw records in event-time order, as a replay or a live feed sends them."""
    files = generate(customers=customers, seed=seed, days=days).write(tmp_path / "demo")
    return records_in_event_time(expand_inputs([*files.inputs()]), worker_context(pii_key))


def migrated_dsn(chdb_path: Path, topic_prefix: str) -> str:
    """This test's own database in the session's chDB path (the sink writes it), migrated."""
    dsn = f"chdb://{chdb_path}?database={topic_prefix.replace('-', '_')}"
    migrate(connect(dsn))
    return dsn


def skewed_backlog(tmp_path: Path, bootstrap: str, topics: Topics, pii_key: str) -> list[RawRecord]:
    """The demo's records produced by event time to one partition per raw topic, before any worker
    reads them: the web partition is dense (several fetches), the others sparse (one each)."""
    ensure_topics(bootstrap, topics, partitions=1)
    records = demo_in_event_time(tmp_path, pii_key, customers=400, seed=11, days=60)
    send(bootstrap, topics, records, pii_key)
    return records


def test_a_backlog_read_at_different_speeds_is_folded_in_event_time_order(
    tmp_path: Path,
    chdb_path: Path,
    kafka_bootstrap: str,
    topic_prefix: str,
    pii_key: str,
    start_worker: Callable,
) -> None:
    """A backlog's partitions are read at different speeds: the dense web partition takes several
    fetches, the sparse phone and email ones one each and run weeks ahead in event time. Aligned
    (docs/stream.md), the worker pauses the ones ahead and folds in event-time order: no touchpoint
    is late, each is published about once, and every held touchpoint's message is committed."""
    topics = Topics(topic_prefix)
    records = skewed_backlog(tmp_path, kafka_bootstrap, topics, pii_key)

    dsn = migrated_dsn(chdb_path, topic_prefix)
    port = free_port()
    sink = SinkThread(dsn, kafka_bootstrap, topics)
    # JOURNEYS_TEST_WORKER_ARGS=--no-align shows what this test guards against (late touchpoints).
    start_worker(
        "w1", metrics_port=port, extra=tuple(os.environ.get("JOURNEYS_TEST_WORKER_ARGS", "").split())
    )
    group = topic_prefix  # the worker's group is its topic prefix

    def all_folded() -> bool:
        metrics = worker_metrics(port)
        return (
            metrics.get(READ, 0) >= len(records)
            and metrics.get(FOLDED, -1) >= metrics.get(MADE, 0)
            and metrics.get("journeys_held_touchpoints", -1) == 0
        )

    try:
        wait_until(all_folded, 180, "every record read and every touchpoint folded", tmp_path)
        metrics = worker_metrics(port)
        refused = metrics.get(DUPLICATES, 0) + metrics.get(
            'journeys_dead_letters_total{stage="reconstruct"}', 0
        )
        admitted = metrics[FOLDED] - refused
        stored = "SELECT count() FROM touchpoints"
        wait_until(lambda: count(dsn, stored) == admitted, 120, "every touchpoint stored", tmp_path)
        wait_until(
            lambda: not backlog(kafka_bootstrap, group, topics.touchpoints), 60, "touchpoints committed"
        )
        metrics = worker_metrics(port)
    finally:
        sink.join()
    assert metrics[FOLDED] == metrics[MADE] and admitted > 5_000
    assert metrics["journeys_alignment_pauses_total"] > 0, "the partitions were read at one speed: no test"
    assert metrics.get('journeys_late_events_total{stage="reconstruct"}', 0) == 0
    assert metrics["journeys_published_touchpoint_rows_total"] <= 1.2 * admitted
    assert metrics.get("journeys_alignment_overflow_total", 0) == 0


class Workers:
    """`journeys worker` processes started together on one broker, their metrics summed."""

    def __init__(
        self,
        start_worker: Callable,
        tmp_path: Path,
        bootstrap: str,
        names: tuple[str, ...] = ("w1", "w2"),
        extra: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
    ) -> None:
        self.tmp_path = tmp_path
        self.ports = {name: free_port() for name in names}
        for name, port in self.ports.items():
            start_worker(name, metrics_port=port, bootstrap=bootstrap, extra=extra, env=env)
        self.logs = {name: tmp_path / f"{name}.log" for name in names}

    def total(self, name: str) -> float:
        return sum(worker_metrics(port).get(name, 0) for port in self.ports.values())

    def admitted(self) -> float:
        """Touchpoints folded into the aggregate: neither duplicates nor refused."""
        refused = self.total(DUPLICATES) + self.total('journeys_dead_letters_total{stage="reconstruct"}')
        return self.total(FOLDED) - refused

    def wait_assigned(self, topics: Topics, raw_partitions_each: int | None = None) -> None:
        """Until every worker holds raw partitions (this many, if given) and one the touchpoints."""

        def assigned() -> bool:
            shares = [assigned_raw_partitions(log, topics) for log in self.logs.values()]
            enough = (
                all(shares)
                if raw_partitions_each is None
                else all(len(share) == raw_partitions_each for share in shares)
            )
            return enough and owner_of_reconstruct(self.logs, topics) is not None

        wait_until(assigned, 180, "every worker to hold its partitions", self.tmp_path)


def test_two_workers_reading_a_backlog_fold_it_in_event_time_order(
    tmp_path: Path, chdb_path: Path, fresh_kafka: str, topic_prefix: str, pii_key: str, start_worker: Callable
) -> None:
    """Two workers read a backlog, one the dense partition 0 of web, the other the sparse rest, in
    small fetches. The reconstruct stage's owner hears from its own normalise stage first; it waits
    for every raw partition to be reported, whichever worker reads it, before it folds, and judges a
    partition idle by when its reports were written, not read: no touchpoint is late and each is
    published about once (docs/stream.md, event-time alignment)."""
    kafka_bootstrap = fresh_kafka
    topics = Topics(topic_prefix)
    ensure_topics(kafka_bootstrap, topics, partitions=2)
    records = demo_in_event_time(tmp_path, pii_key, customers=1000, seed=11, days=60)
    dsn = migrated_dsn(chdb_path, topic_prefix)
    # A replay, on the broker before the workers start: the records keep the hour-old times they
    # were first written at. (Produced while the workers read, it would be read as a live feed.)
    written = int(time.time() * 1000) - 3_600_000
    web = topics.raw("web")
    # Partition 0: two thirds of the web records (dense). Partition 1: the other third and all the
    # email, phone and social ones: as many days in fewer records, read ahead in event time.
    send_to_partitions(
        kafka_bootstrap, topics, records, pii_key, lambda i, topic: int(topic != web or i % 3 == 0), written
    )
    small_fetches = {"CONSUMER_MAX_FETCH_SIZE": "16384"}  # ~30 records a fetch: many per partition
    extra = tuple(os.environ.get("JOURNEYS_TEST_WORKER_ARGS", "").split())
    sink = SinkThread(dsn, kafka_bootstrap, topics)
    workers = Workers(start_worker, tmp_path, kafka_bootstrap, extra=extra, env=small_fetches)
    total = workers.total
    try:
        workers.wait_assigned(topics)
        wait_until(
            lambda: (
                total(READ) >= len(records)
                and total(FOLDED) >= total(MADE) > 0
                and total("journeys_held_touchpoints") == 0
            ),
            240,
            "every record read and every touchpoint folded",
            tmp_path,
        )
        admitted = workers.admitted()
        wait_until(
            lambda: count(dsn, "SELECT count() FROM touchpoints") == admitted, 120, "every touchpoint stored"
        )
        shares = [assigned_raw_partitions(log, topics) for log in workers.logs.values()]
    finally:
        sink.join()
    # Each worker read one partition of every raw topic.
    assert all(len(share) == 4 for share in shares) and not shares[0] & shares[1]
    assert total('journeys_late_events_total{stage="reconstruct"}') == 0
    assert total("journeys_alignment_overflow_total") == 0
    assert total("journeys_published_touchpoint_rows_total") <= 1.2 * admitted


def test_touchpoints_held_for_a_partition_nobody_reports_are_folded_once_the_feed_goes_quiet(
    tmp_path: Path, chdb_path: Path, fresh_kafka: str, topic_prefix: str, pii_key: str, start_worker: Callable
) -> None:
    """Two workers; a short burst reaches partition 0 of every raw topic, none partition 1. The
    partition 1s' worker reads nothing, so it sends no touchpoints messages and the reconstruct stage
    never hears of them: it holds the burst for them, and no later message moves its clock past their
    idle time. Once no touchpoints message came for that time, the timer folds with the wall clock
    (docs/stream.md): every touchpoint is folded then, and none before."""
    kafka_bootstrap = fresh_kafka
    topics = Topics(topic_prefix)
    ensure_topics(kafka_bootstrap, topics, partitions=2)
    records = demo_in_event_time(tmp_path, pii_key, customers=20, seed=3, days=35)
    dsn = migrated_dsn(chdb_path, topic_prefix)
    idle = 10.0  # far longer than the burst takes to read, so only the quiet timer can release it
    sink = SinkThread(dsn, kafka_bootstrap, topics)
    workers = Workers(start_worker, tmp_path, kafka_bootstrap, extra=("--align-idle-seconds", str(idle)))
    total = workers.total
    try:
        workers.wait_assigned(topics, raw_partitions_each=4)  # one of each raw topic
        sent_at = time.monotonic()
        send_to_partitions(
            kafka_bootstrap, topics, records, pii_key, lambda i, topic: 0, int(time.time() * 1000)
        )
        wait_until(
            lambda: total(READ) >= len(records) and total(MADE) > 0, 60, "the burst normalised", tmp_path
        )
        wait_until(
            lambda: total(FOLDED) >= total(MADE) and total("journeys_held_touchpoints") == 0,
            60,
            "every touchpoint folded",
            tmp_path,
        )
        folded_after = time.monotonic() - sent_at
        admitted = workers.admitted()
        wait_until(
            lambda: count(dsn, "SELECT count() FROM touchpoints") == admitted, 120, "every touchpoint stored"
        )
    finally:
        sink.join()
    folds = [
        entry
        for path in workers.logs.values()
        for line in path.read_bytes().splitlines()
        if b'"reconstruct: ' in line and (entry := orjson.loads(line)).get("touchpoints")
    ]
    assert folds and all(entry["quiet"] for entry in folds), folds
    assert sum(entry["touchpoints"] for entry in folds) == total(FOLDED) == total(MADE) > 50
    assert folded_after >= idle
    assert total("journeys_alignment_lapses_total") == 4  # partition 1 of each raw topic, once
    assert total('journeys_late_events_total{stage="reconstruct"}') == 0


def send_to_partitions(
    bootstrap: str,
    topics: Topics,
    records: list[RawRecord],
    pii_key: str,
    partition_of: Callable[[int, str], int],
    timestamp_ms: int,
) -> None:
    """`produce_records`, but each record to the partition `partition_of(index, topic)` picks and
    stamped `timestamp_ms` (a replay keeps the times records were first written at)."""

    class Placing:
        def __init__(self, producer: Any) -> None:
            self.producer, self.config, self.sent = producer, producer.config, 0

        def send(self, topic: str, **kwargs: Any) -> Any:
            self.sent += 1
            partition = partition_of(self.sent - 1, topic)
            return self.producer.send(topic, partition=partition, timestamp_ms=timestamp_ms, **kwargs)

    producer = make_producer(bootstrap)
    result = ProduceSummary()
    produce_records(records, Placing(producer), topics, PiiHasher(pii_key), result)
    producer.flush()
    producer.close()
    assert result.failed == 0


def test_a_worker_stopped_while_holding_touchpoints_stops_at_once_and_loses_none(
    tmp_path: Path,
    chdb_path: Path,
    kafka_bootstrap: str,
    topic_prefix: str,
    pii_key: str,
    start_worker: Callable,
) -> None:
    """Faust waits for every delivered message to be acknowledged before a stop or a rebalance
    completes; a held touchpoint's message is acknowledged only once it is folded. The worker hands
    such messages back (never committed) so a stop does not wait for them, and its successor reads
    them again: every touchpoint is stored, once."""
    topics = Topics(topic_prefix)
    skewed_backlog(tmp_path, kafka_bootstrap, topics, pii_key)
    database = topic_prefix.replace("-", "_")
    embedded = run(
        expand_inputs([tmp_path / "demo"]), Settings(dsn=f"chdb://{chdb_path}?database={database}_e")
    )
    dsn = f"chdb://{chdb_path}?database={database}"
    migrate(connect(dsn))
    port = free_port()
    sink = SinkThread(dsn, kafka_bootstrap, topics)
    first = start_worker("w1", metrics_port=port)
    try:
        wait_until(
            lambda: worker_metrics(port).get("journeys_held_touchpoints", 0) > 0,
            120,
            "touchpoints held",
            tmp_path,
        )
        first.send_signal(signal.SIGTERM)
        began = time.monotonic()
        first.wait(timeout=60)
        stopped_in = time.monotonic() - began
        start_worker("w2")
        wait_until(settled(dsn, embedded.touchpoints_new), 180, "the successor to fold everything", tmp_path)
    finally:
        sink.join()
    assert stopped_in < 15, f"the stop waited {stopped_in:.1f} s for held touchpoints"
    stored = rows(dsn, "SELECT count(), uniqExact(event_id) FROM touchpoints")[0]
    assert stored == (embedded.touchpoints_new, embedded.touchpoints_new)


def committed(bootstrap: str, group: str) -> dict[TopicPartition, int]:
    """The group's committed offsets, as the broker has them."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        offsets = admin.list_group_offsets({group: None}).get(group, {})
    finally:
        admin.close()
    return {tp: meta.offset for tp, meta in offsets.items()}


def backlog(bootstrap: str, group: str, *topics: str) -> list[Any]:
    """The messages on `topics` past the group's committed offsets (all of a partition it never committed on).

    Read up to each partition's high-water mark as the fetches report it: Tansu's
    ListOffsets (`end_offsets`) under-reports partitions written in multi-record batches.
    """
    offsets = committed(bootstrap, group)
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    try:
        partitions = [
            TopicPartition(topic, partition)
            for topic in topics
            for partition in sorted(consumer.partitions_for_topic(topic) or ())
        ]
        consumer.assign(partitions)
        for tp in partitions:
            consumer.seek(tp, offsets.get(tp, 0))
        messages: list[Any] = []
        deadline = time.monotonic() + 60
        while any(
            consumer.highwater(tp) is None or consumer.position(tp) < consumer.highwater(tp)
            for tp in partitions
        ):
            assert time.monotonic() < deadline, f"could not read {topics} up to their high-water marks"
            messages.extend(m for batch in consumer.poll(timeout_ms=200).values() for m in batch)
        return messages
    finally:
        consumer.close()


def published_events(messages: list[Any]) -> set[str]:
    """The event ids in the `events` messages among state-topic messages."""
    ids: set[str] = set()
    for message in messages:
        if message.value and message.value.startswith(b'{"kind":"events"'):
            ids.update(event["event_id"] for event in orjson.loads(message.value)["events"])
    return ids


def event_ids(dsn: str) -> set[str]:
    return {event_id for (event_id,) in rows(dsn, "SELECT event_id FROM events")}


class StorageOutage:
    """A fault harness around the sink's real ClickHouse client: while `down` is set every call
    fails before it reaches ClickHouse, as it does against a stopped server."""

    def __init__(self) -> None:
        self.down = threading.Event()
        self.refused = 0

    def around(self, client: Client) -> Any:
        return _RefusingClient(client, self)


class _RefusingClient:
    def __init__(self, client: Client, outage: StorageOutage) -> None:
        self._client = client
        self._outage = outage

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._client, name)
        if not callable(attribute):
            return attribute

        def call(*args: Any, **kwargs: Any) -> Any:
            if self._outage.down.is_set():
                self._outage.refused += 1
                raise OperationalError(
                    f"Error executing HTTP request (test outage, {name}): Connection refused"
                )
            return attribute(*args, **kwargs)

        return call


def test_clickhouse_down_mid_stream_the_sink_holds_its_offsets_and_everything_arrives_once(
    tmp_path: Path,
    chdb_path: Path,
    kafka_bootstrap: str,
    topic_prefix: str,
    pii_key: str,
    start_worker: Callable,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """ClickHouse refuses every call while the second half of the events streams in, then comes back.

    The worker writes to Kafka only: it reads every record and publishes every event
    meanwhile. The sink backs off, commits nothing, and what ClickHouse lacks waits on
    the state topic; after recovery the end state equals one embedded run.
    """
    embedded, summary, records, streamed = reference_run(tmp_path, chdb_path, topic_prefix, seed=17)
    first, rest = records[: len(records) // 2], records[len(records) // 2 :]
    topics = Topics(topic_prefix)
    ensure_topics(kafka_bootstrap, topics, partitions=4)
    migrate(connect(streamed))
    wanted = event_ids(embedded.dsn)
    outage = StorageOutage()
    with SinkThread(
        streamed, kafka_bootstrap, topics, around=outage.around, retry_initial=0.2, retry_max=1.6
    ) as sink:
        start_worker("w1", bootstrap=kafka_bootstrap)
        send(kafka_bootstrap, topics, first, pii_key)
        wait_until(
            lambda: count(streamed, "SELECT count() FROM events") > 0, 120, "the first events", tmp_path
        )
        outage.down.set()
        send(kafka_bootstrap, topics, rest, pii_key)
        wait_until(lambda: outage.refused > 0, 60, "the sink to meet the outage", tmp_path)
        held = committed(kafka_bootstrap, sink.group)  # it can commit nothing before it has written
        stored = event_ids(streamed)  # and write nothing while ClickHouse is down
        assert stored < wanted
        # The worker writes to Kafka only: every event ClickHouse lacks reaches the state topic,
        # past the sink's committed offset.
        wait_until(
            lambda: stored | published_events(backlog(kafka_bootstrap, sink.group, topics.state)) == wanted,
            120,
            "every event ClickHouse lacks on the state topic past the sink's committed offset",
            tmp_path,
        )
        wait_until(lambda: sink.metrics.get("journeys_sink_retries_total") >= 5, 60, "five retries", tmp_path)
        assert committed(kafka_bootstrap, sink.group) == held
        assert event_ids(streamed) == stored

        outage.down.clear()
        wait_until(settled(streamed, summary.touchpoints_new), 180, "the sink to catch up", tmp_path)
        wait_until(
            lambda: not backlog(kafka_bootstrap, sink.group, topics.state, topics.dead_letters),
            60,
            "the sink to commit everything",
            tmp_path,
        )
    assert_same_state(streamed, embedded.dsn, summary)
    # Exponential backoff: the delay doubles up to retry_max.
    delays = [r.args[1] for r in caplog.records if r.name == "journeys.sink" and "retrying" in r.msg]
    assert delays[:4] == [0.2, 0.4, 0.8, 1.6] and set(delays[4:]) == {1.6}, delays
    print(
        f"figures: {len(records)} raw records, {summary.touchpoints_new} events streamed; "
        f"ClickHouse refused {outage.refused} calls, "
        f"{len(delays)} sink retries; {len(wanted - stored)} events waited in Kafka; 0 lost"
    )


def rewind(bootstrap: str, group: str, *topics: str, protocol: str = "range") -> None:
    """Commit offset 0 for the group on every partition of `topics`, while none of its consumers runs.

    Done as a member of the group under its own assignment protocol (`faust` for the
    workers). The admin API's offset reset (`kafka-consumer-groups --reset-offsets`) needs
    an empty group, and Tansu never empties a group a Faust worker has left (the reset
    answers UNKNOWN_MEMBER_ID); a join makes it drop the departed member after the
    rebalance timeout.
    """
    assignor = type("Assignor", (RangePartitionAssignor,), {"name": protocol})
    consumer = KafkaConsumer(
        *topics,
        bootstrap_servers=bootstrap,
        group_id=group,
        enable_auto_commit=False,
        partition_assignment_strategy=(assignor,),
        session_timeout_ms=6000,
        heartbeat_interval_ms=1000,
    )
    try:
        partitions = {
            TopicPartition(topic, partition)
            for topic in topics
            for partition in consumer.partitions_for_topic(topic) or ()
        }
        deadline = time.monotonic() + 60
        while consumer.assignment() != partitions:
            assert time.monotonic() < deadline, f"{group} did not hand this consumer {topics}"
            consumer.poll(timeout_ms=200)
        consumer.commit({tp: OffsetAndMetadata(0, "", -1) for tp in partitions})
    finally:
        consumer.close()
    assert all(committed(bootstrap, group)[tp] == 0 for tp in partitions)


READ = 'journeys_records_in_total{stage="normalise"}'
FOLDED = 'journeys_records_in_total{stage="reconstruct"}'
DUPLICATES = 'journeys_duplicates_total{stage="reconstruct"}'
MADE = 'journeys_records_out_total{stage="normalise"}'


def worker_metrics(port: int) -> dict[str, float]:
    try:
        return scrape(port)
    except OSError:  # not serving yet
        return {}


def caught_up(
    port: int, raw_records: int, dsn: str, expected_events: int, bootstrap: str, sink: SinkThread
) -> Callable[[], bool]:
    """A condition: the worker has read `raw_records` raw records (a record read twice counts twice)
    and folded every touchpoint it made; the sink has written and committed everything on the state
    and dead-letter topics; and the stream has settled.

    The worker's own commits are not waited for: after Faust skipped records and the worker read
    them again, Faust's commits can trail for minutes (docs/reliability.md).
    """
    stream_settled = settled(dsn, expected_events)

    def check() -> bool:
        worker = worker_metrics(port)
        return (
            worker.get(READ, 0) >= raw_records
            and worker.get(FOLDED, 0) >= worker.get(MADE, 0)
            and not backlog(bootstrap, sink.group, sink.topics.state, sink.topics.dead_letters)
            and stream_settled()
        )

    return check


def deliver_by_webhook(bootstrap: str, topics: Topics, pii_key: str, demo: Path) -> Counter[str]:
    """The demo's events again, the way the providers deliver them, to two collector instances.

    Instance A gets every SendGrid event as a webhook POST of its own (the export file
    batches them differently, so the bytes, the key and maybe the partition differ), every
    Twilio status callback form-encoded (the export has them as JSON) and every Segment
    batch; instance B gets the Segment batches again, as after a retry that landed on
    another instance. Returns the raw records the collectors put on Kafka and the events
    they accepted.
    """
    lines = {
        name: (demo / name).read_bytes().splitlines() for name in ("email.jsonl", "twilio.jsonl", "web.jsonl")
    }
    sendgrid = [orjson.dumps([event]) for line in lines["email.jsonl"] for event in orjson.loads(line)]
    twilio = [urlencode(orjson.loads(line)).encode() for line in lines["twilio.jsonl"]]
    segment = [("/v1/batch", body, {**JSON, **basic(WRITE_KEY)}) for body in lines["web.jsonl"]]
    tally: Counter[str] = Counter()

    def posting(requests: Callable[[TestClient], list[tuple[str, bytes, dict[str, str]]]]) -> Call:
        async def post_all(client: TestClient) -> None:
            gate = asyncio.Semaphore(16)

            async def post(path: str, body: bytes, headers: dict[str, str]) -> None:
                async with gate:
                    response = await client.post(path, data=body, headers=headers)
                    answer = await response.json()
                assert response.status in (200, 400), (path, response.status, answer)
                tally["raw records"] += response.status == 200
                tally["events accepted"] += answer.get("accepted", 0)

            await asyncio.gather(*(post(*request) for request in requests(client)))

        return post_all

    serve(
        bootstrap,
        topics,
        pii_key,
        posting(
            lambda client: [
                *(("/sendgrid/events", body, sendgrid_signed(body)) for body in sendgrid),
                *(
                    ("/twilio/voice/status", body, twilio_signed(client, "/twilio/voice/status", body))
                    for body in twilio
                ),
                *segment,
            ]
        ),
    )
    serve(bootstrap, topics, pii_key, posting(lambda _: segment))
    return tally


def test_records_delivered_twice_by_any_path_and_replayed_are_counted_once(
    tmp_path: Path,
    chdb_path: Path,
    kafka_bootstrap: str,
    topic_prefix: str,
    pii_key: str,
    start_worker: Callable,
) -> None:
    """Redelivery in its three forms, one after the other on the same stream; each changes nothing.

    1. Every raw record produced twice (a replay run again after a producer failed midway, or a
       retry that is not deduplicated by the broker), plus the same events by webhook through
       two collector instances: the end state equals one embedded run.
    2. The worker group's offsets on the raw topics reset to the beginning, a worker restarted:
       it reads everything again; nothing changes.
    3. The sink group's offsets reset to the beginning, the sink restarted: it writes every state
       message again; nothing changes.
    """
    embedded, summary, records, streamed = reference_run(tmp_path, chdb_path, topic_prefix, seed=19)
    topics = Topics(topic_prefix)
    ensure_topics(kafka_bootstrap, topics, partitions=4)
    migrate(connect(streamed))
    for _ in range(2):
        send(kafka_bootstrap, topics, records, pii_key)
    webhooks = deliver_by_webhook(kafka_bootstrap, topics, pii_key, tmp_path / "demo")
    raw_records = 2 * len(records) + webhooks["raw records"]
    # Each valid event came twice from the files, once or twice more by webhook.
    arrivals = 2 * (summary.touchpoints_new + summary.duplicates) + webhooks["events accepted"]
    kept = (
        *STATE,
        ("events", "event_id"),
        ("identity_merges", "event_id, absorbed_customer_id"),
        ("dead_letters", "fingerprint"),
    )
    file_letters = (
        "SELECT format, origin, reason FROM dead_letters WHERE origin NOT LIKE 'POST %' ORDER BY ALL"
    )

    worker_port = free_port()
    with SinkThread(streamed, kafka_bootstrap, topics) as sink:
        worker = start_worker("w1", metrics_port=worker_port, bootstrap=kafka_bootstrap)
        done = caught_up(worker_port, raw_records, streamed, summary.touchpoints_new, kafka_bootstrap, sink)
        wait_until(done, 180, "the stream to take everything in", tmp_path)
        read = worker_metrics(worker_port)[READ]
        duplicates = worker_metrics(worker_port)['journeys_duplicates_total{stage="reconstruct"}']
        assert duplicates >= arrivals - summary.touchpoints_new
        assert_same_state(streamed, embedded.dsn, summary)
        # The same refused records, stored once each (the webhooks' own refusals aside).
        assert rows(streamed, file_letters) == rows(embedded.dsn, file_letters)
        stored = {table: rows_of(streamed, table, order_by) for table, order_by in kept}

        # 2. Consumer replay: the worker group starts again from the beginning of the raw topics.
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=30)
        rewind(kafka_bootstrap, topic_prefix, *topics.all_raw, protocol="faust")
        worker_port = free_port()
        start_worker("w2", metrics_port=worker_port, bootstrap=kafka_bootstrap)
        done = caught_up(worker_port, raw_records, streamed, summary.touchpoints_new, kafka_bootstrap, sink)
        try:
            wait_until(done, 180, "the worker to read everything again", tmp_path)
        except AssertionError as timeout:
            progress = {k: v for k, v in worker_metrics(worker_port).items() if k in (READ, FOLDED, MADE)}
            raise AssertionError(
                f"{raw_records} raw records to read again; the worker: {progress}"
            ) from timeout
        for table, order_by in kept:
            assert rows_of(streamed, table, order_by) == stored[table], f"{table} after the worker's replay"

    # 3. The sink group starts again from the beginning of the state and dead-letter topics.
    rewind(kafka_bootstrap, sink.group, topics.state, topics.dead_letters)
    messages = len(backlog(kafka_bootstrap, sink.group, topics.state, topics.dead_letters))
    with SinkThread(streamed, kafka_bootstrap, topics) as again:
        wait_until(
            lambda: (
                again.metrics.get("journeys_records_in_total", stage="sink") >= messages
                and not backlog(kafka_bootstrap, again.group, topics.state, topics.dead_letters)
            ),
            120,
            "the sink to write everything again",
            tmp_path,
        )
    for table, order_by in kept:
        assert rows_of(streamed, table, order_by) == stored[table], f"{table} after the sink's replay"
    print(
        f"figures: {raw_records} raw records ({len(records)} distinct), {arrivals} valid event arrivals, "
        f"{summary.touchpoints_new} events stored once; {duplicates:.0f} duplicates dropped by the worker; "
        f"replays: the worker read {read:.0f} records, the sink wrote {messages} messages again; 0 lost"
    )
