"""The ClickHouse sink against the real broker and chDB: retries while ClickHouse refuses, then commits."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta

from kafka import KafkaConsumer, TopicPartition

from ingest.kafka import ensure_topics, make_producer
from ingest.topics import Topics
from journeys.fold import JourneyPolicy
from journeys.identity import IdentityPolicy
from journeys.live import LiveReconstruction
from journeys.reconstruct import Reconstruction
from journeys.touchpoint import Touchpoint
from processors.config import load_rules
from processors.storage import connect, migrate
from processors.stream.messages import encode_touchpoint, state_messages
from processors.stream.metrics import Metrics
from processors.stream.sink import SinkConfig, run_sink

RULES = load_rules()
T0 = datetime(2026, 9, 1, tzinfo=UTC)


def visits(count: int) -> list[Touchpoint]:
    return [
        Touchpoint(
            event_id=f"v{n}",
            occurred_at=T0 + timedelta(minutes=n),
            channel="web",
            source="segment",
            action="Product Viewed",
            identifiers=[{"type": "anonymous_id", "value": f"visitor-{n % 4}"}],
        )
        for n in range(count)
    ]


def test_the_sink_holds_its_batch_while_clickhouse_refuses_and_commits_after_writing(
    kafka_bootstrap: str, topic_prefix: str, dsn: str
) -> None:
    topics = Topics(topic_prefix)
    ensure_topics(kafka_bootstrap, topics, partitions=1)
    live = LiveReconstruction(Reconstruction(RULES, IdentityPolicy(), JourneyPolicy()))
    batch = visits(20)
    result = live.admit_batch(batch)
    raw = {tp.event_id: encode_touchpoint(tp) for tp in batch}
    producer = make_producer(kafka_bootstrap)
    messages = list(state_messages(result, live.reconstruction, raw, datetime.now(UTC)))
    for key, value in messages:
        producer.send(topics.state, key=key, value=value)
    producer.flush()
    producer.close()

    client = connect(dsn)
    migrate(client)
    # ClickHouse refuses every write to journeys until the table is back.
    client.command("RENAME TABLE journey_versions TO journey_versions_away")
    metrics = Metrics()

    def bring_clickhouse_back() -> None:
        while metrics.get("journeys_sink_retries_total") < 2:
            time.sleep(0.05)
        client.command("RENAME TABLE journey_versions_away TO journey_versions")

    restored = threading.Thread(target=bring_clickhouse_back, daemon=True)
    restored.start()
    config = SinkConfig(
        bootstrap=kafka_bootstrap,
        topics=topics,
        group_id=f"{topic_prefix}-sink",
        metrics_port=None,
        max_seconds=0.2,
        idle_exit=3.0,
        retry_initial=0.2,
        session_timeout_ms=6000,
        heartbeat_interval_ms=1000,
    )
    summary = run_sink(lambda: client, config, metrics=metrics)
    restored.join(timeout=5)

    assert summary.retries >= 2
    assert client.query("SELECT count() FROM touchpoints").result_rows == [(20,)]
    assert client.query("SELECT count(), sum(touchpoint_count) FROM journeys").result_rows == [(4, 20)]
    # Offsets were committed only once the batch was written: nothing left for the group.
    consumer = KafkaConsumer(bootstrap_servers=kafka_bootstrap, group_id=config.group_id)
    partition = TopicPartition(topics.state, 0)
    assert consumer.committed(partition) == len(messages)
    consumer.close()
