"""The rebalance guard: a partition whose records skip past the offset it must read next is rewound."""

from __future__ import annotations

from ingest.kafka import ensure_topics, make_producer
from ingest.topics import Topics
from processors.stream.offsets import (
    MAX_REWINDS,
    WATCH_SECONDS,
    NextOffsets,
    committed_offsets,
    start_offsets,
)


def test_a_first_record_beyond_the_committed_offset_asks_for_a_rewind() -> None:
    guard = NextOffsets()
    guard.expect({("raw.web", 0): 5, ("raw.web", 1): 9, ("raw.email", 0): -1})
    records = [(("raw.web", 0), 7), (("raw.web", 0), 8), (("raw.web", 1), 9), (("raw.email", 0), 3)]
    assert guard.skipped(records) == {("raw.web", 0): 5}
    # After the first record, the next must follow it.
    assert guard.skipped([(("raw.web", 1), 10), (("raw.email", 0), 4)]) == {}


def test_a_record_skipped_mid_partition_is_asked_for_until_it_is_read() -> None:
    """Faust can drop one record between the fetch and the stream and commit past it (offsets.py)."""
    web = ("raw.web", 1)
    guard = NextOffsets()
    guard.expect({web: 0})
    assert guard.skipped([(web, 0), (web, 1), (web, 2), (web, 3), (web, 4)]) == {}
    assert guard.skipped([(web, 6), (web, 7)]) == {web: 5}
    # Records the stage was handed before the seek took effect ask for nothing more.
    assert guard.skipped([(web, 8)]) == {}
    # After the seek: read again from 5; what was read before changes nothing.
    assert guard.skipped([(web, 5), (web, 6), (web, 7), (web, 8), (web, 9)]) == {}
    assert guard.skipped([(web, 10)]) == {}
    assert guard.skipped([(web, 3)]) == {}  # a record read again (a rebalance's seek) is no gap
    assert guard.skipped([(web, 11)]) == {}


def test_an_offset_the_partition_does_not_have_is_given_up_after_a_few_seeks() -> None:
    """A transaction marker takes an offset no record has: the stage must not seek back forever."""
    web = ("raw.web", 0)
    guard = NextOffsets()
    guard.expect({web: 0})
    guard.skipped([(web, 0), (web, 1)])
    asked = 0
    while guard.skipped([(web, 3), (web, 4)]) == {web: 2}:  # each read from the seek back to 2
        asked += 1
        assert asked <= MAX_REWINDS
    assert asked == MAX_REWINDS
    assert guard.skipped([(web, 5)]) == {}


def test_records_handed_over_before_the_seek_ask_for_one_rewind() -> None:
    """Faust skipped a partition's first records after an assignment; batches it had already handed
    the stage keep coming after the seek: one seek back is enough."""
    email = ("raw.email", 3)
    guard = NextOffsets()
    guard.expect({email: 0})
    assert guard.skipped([(email, 40), (email, 41)]) == {email: 0}
    for later in range(42, 60, 3):
        assert guard.skipped([(email, later), (email, later + 1), (email, later + 2)]) == {}
    assert guard.skipped([(email, 0), (email, 1)]) == {}  # the seek took effect
    assert guard.skipped([(email, 3)]) == {email: 2}  # and the partition is watched again


def test_a_commit_past_a_partition_whose_records_were_never_seen_asks_for_a_rewind() -> None:
    """The skipped records were the partition's last: no later record shows the gap, the commit does."""
    guard = NextOffsets()
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
