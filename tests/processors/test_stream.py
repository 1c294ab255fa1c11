"""The stream stack against a real broker: the same events give the same rows as `journeys run`.

A Tansu broker (real Kafka protocol) is started by the session fixture, the
workers run as real `journeys worker` processes, and the sink runs here (the
only process writing this test session's chDB path).
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import OperationalError
from kafka import KafkaConsumer, TopicPartition
from kafka.admin import KafkaAdminClient

from ingest.demo import generate
from ingest.files import read_records
from ingest.kafka import ensure_topics, make_producer
from ingest.pii import PiiHasher
from ingest.producer import ProduceSummary, produce_files, produce_records
from ingest.records import RawRecord
from ingest.topics import Topics
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
}


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

    def start(name: str, metrics_port: int = 0, bootstrap: str | None = None) -> subprocess.Popen:
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
            ],
            env=stream_env,
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


def count(dsn: str, query: str) -> int:
    return connect(dsn).query(query).result_rows[0][0]


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
    """A view's rows without its ingest-time columns."""
    client = connect(dsn)
    excluded = INGEST_TIME_COLUMNS.get(table, set())
    columns = [c for c in client.query(f"SELECT * FROM {table} LIMIT 0").column_names if c not in excluded]
    return client.query(f"SELECT {', '.join(columns)} FROM {table} ORDER BY {order_by}").result_rows


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
    left = connect(streamed_dsn).query(dropoff).result_rows
    assert left and left == connect(embedded_dsn).query(dropoff).result_rows
    dead_letters = "SELECT reason, format FROM dead_letters ORDER BY reason, format"
    assert (
        connect(streamed_dsn).query(dead_letters).result_rows
        == connect(embedded_dsn).query(dead_letters).result_rows
    )


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


def explain_missing(streamed: str, embedded: str, bootstrap: str, topics: Topics) -> str:
    """The events that never arrived, and whether their raw records are on the broker at all."""
    have = {row[0] for row in connect(streamed).query("SELECT event_id FROM events").result_rows}
    want = {row[0] for row in connect(embedded).query("SELECT event_id FROM events").result_rows}
    missing = sorted(want - have)
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

    dsn = f"chdb://{chdb_path}?database={topic_prefix.replace('-', '_')}"
    migrate(connect(dsn))
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
    assert sink_metrics["journeys_sink_batches_total"] >= 1 and "journeys_sink_batch_seconds" in sink_metrics
    assert any(name.startswith("journeys_consumer_lag{") for name in sink_metrics)
    reasons = dict(connect(dsn).query("SELECT format, reason FROM dead_letters").result_rows)
    assert reasons["segment"].startswith("malformed JSON")
    assert reasons["touchpoint"].startswith("not a canonical touchpoint")
    assert reasons["state"].startswith("unreadable state message")


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
    return {row[0] for row in connect(dsn).query("SELECT event_id FROM events").result_rows}


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
        wait_until(
            lambda: not backlog(kafka_bootstrap, topic_prefix, *topics.all_raw, topics.touchpoints),
            120,
            "the worker to read and commit every record",
            tmp_path,
        )
        wait_until(lambda: sink.metrics.get("journeys_sink_retries_total") >= 5, 60, "five retries", tmp_path)

        waiting = published_events(backlog(kafka_bootstrap, sink.group, topics.state))
        assert committed(kafka_bootstrap, sink.group) == held
        stored = event_ids(streamed)
        assert stored < wanted and stored | waiting == wanted, (
            "what ClickHouse lacks waits on the state topic"
        )

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
