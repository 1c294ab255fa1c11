"""Topic layout and the idempotent producer against the real broker."""

from __future__ import annotations

import pytest
from kafka import KafkaAdminClient, KafkaConsumer
from kafka.admin import NewTopic

from ingest.kafka import TopicLayoutError, ensure_topics, make_producer, topic_layout
from ingest.topics import Topics


def test_layout_gives_the_ordered_topics_one_partition() -> None:
    topics = Topics("p")
    layout = topic_layout(topics, partitions=4)
    assert layout[topics.touchpoints] == layout[topics.state] == layout[topics.progress] == 1
    assert {layout[name] for name in topics.all_raw} == {4}
    assert layout[topics.dead_letters] == 4
    with pytest.raises(ValueError, match="at least 1"):
        topic_layout(topics, partitions=0)


def test_ensure_topics_creates_them_once(kafka_bootstrap: str, topic_prefix: str) -> None:
    topics = Topics(topic_prefix)
    first = ensure_topics(kafka_bootstrap, topics, partitions=3)
    assert first == topic_layout(topics, partitions=3)
    # A second call (another process starting) changes nothing, even with another count.
    assert ensure_topics(kafka_bootstrap, topics, partitions=5) == first


def test_a_state_topic_with_several_partitions_is_refused(kafka_bootstrap: str, topic_prefix: str) -> None:
    topics = Topics(topic_prefix)
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    admin.create_topics([NewTopic(topics.state, 3, 1)])
    admin.close()
    with pytest.raises(TopicLayoutError, match="must have exactly 1"):
        ensure_topics(kafka_bootstrap, topics)


def test_the_producer_delivers_in_key_order(kafka_bootstrap: str, topic_prefix: str) -> None:
    topics = Topics(topic_prefix)
    ensure_topics(kafka_bootstrap, topics, partitions=2)
    producer = make_producer(kafka_bootstrap)
    for n in range(50):
        producer.send(topics.raw("web"), key=b"visitor-%d" % (n % 3), value=b"%d" % n)
    producer.flush()
    producer.close()
    consumer = KafkaConsumer(
        topics.raw("web"),
        bootstrap_servers=kafka_bootstrap,
        auto_offset_reset="earliest",
        consumer_timeout_ms=3000,
    )
    by_key: dict[bytes, list[int]] = {}
    for message in consumer:
        by_key.setdefault(message.key, []).append(int(message.value))
    consumer.close()
    assert sum(len(values) for values in by_key.values()) == 50
    assert all(values == sorted(values) for values in by_key.values())


def test_partitions_and_replication_come_from_the_environment() -> None:
    from ingest.kafka import partitions_from_env, replication_from_env

    assert partitions_from_env({}) == 6 and replication_from_env({}) == 1
    assert partitions_from_env({"JOURNEYS_PARTITIONS": "12"}) == 12
    assert replication_from_env({"JOURNEYS_REPLICATION_FACTOR": "3"}) == 3
    with pytest.raises(ValueError, match="JOURNEYS_PARTITIONS must be a whole number"):
        partitions_from_env({"JOURNEYS_PARTITIONS": "many"})
