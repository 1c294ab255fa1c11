"""The rebalance guard: a partition whose first record skips past its committed offset is rewound."""

from __future__ import annotations

from ingest.kafka import ensure_topics, make_producer
from ingest.topics import Topics
from processors.stream.offsets import WATCH_SECONDS, FirstOffsets, committed_offsets, start_offsets


def test_a_first_record_beyond_the_committed_offset_asks_for_a_rewind() -> None:
    guard = FirstOffsets()
    guard.expect({("raw.web", 0): 5, ("raw.web", 1): 9, ("raw.email", 0): -1})
    records = [(("raw.web", 0), 7), (("raw.web", 0), 8), (("raw.web", 1), 9), (("raw.email", 0), 3)]
    assert guard.skipped(records) == {("raw.web", 0): 5}
    # Only the first record after an assignment is checked.
    assert guard.skipped([(("raw.web", 1), 20)]) == {}


def test_a_commit_past_a_partition_whose_records_were_never_seen_asks_for_a_rewind() -> None:
    """The skipped records were the partition's last: no later record shows the gap, the commit does."""
    guard = FirstOffsets()
    guard.expect({("raw.phone", 2): 10, ("raw.phone", 3): 4, ("raw.web", 0): 7}, now=100.0)
    assert sorted(guard.awaiting(now=101.0)) == [("raw.phone", 2), ("raw.phone", 3), ("raw.web", 0)]
    guard.skipped([(("raw.web", 0), 7)])  # seen normally: no longer awaited
    assert guard.overtaken({("raw.phone", 2): 11, ("raw.phone", 3): 4, ("raw.web", 0): 9}) == {
        ("raw.phone", 2): 10
    }
    assert guard.awaiting(now=102.0) == [("raw.phone", 3)]
    # Only for a while after the assignment: a quiet partition stops being polled.
    assert guard.awaiting(now=100.0 + WATCH_SECONDS) == []


def test_committed_offsets_come_from_the_broker(kafka_bootstrap: str, topic_prefix: str) -> None:
    from kafka import KafkaConsumer, TopicPartition
    from kafka.structs import OffsetAndMetadata

    topics = Topics(topic_prefix)
    ensure_topics(kafka_bootstrap, topics, partitions=1)
    producer = make_producer(kafka_bootstrap)
    for n in range(5):
        producer.send(topics.raw("web"), value=b"%d" % n)
    producer.flush()
    producer.close()
    group = f"{topic_prefix}-group"
    consumer = KafkaConsumer(bootstrap_servers=kafka_bootstrap, group_id=group, enable_auto_commit=False)
    partition = TopicPartition(topics.raw("web"), 0)
    consumer.assign([partition])
    consumer.commit({partition: OffsetAndMetadata(3, "", -1)})
    consumer.close()
    found = committed_offsets(kafka_bootstrap, group, [(topics.raw("web"), 0), (topics.raw("email"), 0)])
    assert found[(topics.raw("web"), 0)] == 3
    assert found.get((topics.raw("email"), 0), -1) == -1
    # A partition nobody committed on starts at its beginning: the guard checks it too.
    starts = start_offsets(kafka_bootstrap, group, [(topics.raw("web"), 0), (topics.raw("email"), 0)])
    assert starts == {(topics.raw("web"), 0): 3, (topics.raw("email"), 0): 0}
