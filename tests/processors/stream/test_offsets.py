"""The commit guard: offsets are never committed past a record the stages did not process."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from faust.types import TP
from faust.types.tuples import Message as FaustMessage

from ingest.kafka import ensure_topics, make_producer
from ingest.topics import Topics
from processors.config import Settings
from processors.stream.app import StreamConfig, create_app
from processors.stream.offsets import (
    HOLD_SECONDS,
    STUCK_SECONDS,
    CommitGuard,
    committed_offsets,
    start_offsets,
)


@dataclass(frozen=True, eq=False)
class Message:
    """What the guard reads of a Faust message."""

    topic: str
    partition: int
    offset: int


def _guard(starts: dict[tuple[str, int], int]) -> CommitGuard:
    guard = CommitGuard({"raw.web", "raw.email", "raw.phone"})
    guard.assigned(starts)
    guard.learn(starts)
    return guard


def test_a_first_record_beyond_the_start_asks_for_a_rewind() -> None:
    guard = _guard({("raw.web", 0): 5, ("raw.web", 1): 9, ("raw.email", 0): 0})
    records = [(("raw.web", 0), 7), (("raw.web", 0), 8), (("raw.web", 1), 9), (("raw.email", 0), 0)]
    assert guard.skipped(records) == {("raw.web", 0): 5}
    # Only the first record after an assignment is checked.
    assert guard.skipped([(("raw.web", 1), 20)]) == {}


def test_only_records_a_stage_took_count_as_acknowledged() -> None:
    guard = _guard({("raw.web", 0): 0})
    taken, skipped = Message("raw.web", 0, 1), Message("raw.web", 0, 2)
    guard.took([taken])
    assert guard.may_ack(taken)
    assert not guard.may_ack(skipped)  # Faust acknowledges records it skipped: they must not count
    assert not guard.may_ack(taken)  # counted once
    assert guard.may_ack(Message("journeys-event-log-changelog", 0, 7))  # not a stream topic


def test_a_commit_starts_exactly_at_the_base_and_a_missing_head_holds_it() -> None:
    guard = _guard({("raw.web", 0): 6, ("raw.email", 0): 0})
    tp = ("raw.web", 0)
    assert guard.may_commit(tp, None, 6, now=0.0)
    assert not guard.may_commit(tp, None, 7, now=0.0)  # record 6 was never processed
    assert not guard.may_commit(tp, 9, 10, now=1.0)  # committed at 9: record 9 missing
    assert guard.may_commit(tp, 9, 9, now=2.0)
    assert guard.may_commit(("raw.email", 0), None, 0, now=0.0)
    assert guard.may_commit(("raw.email", 0), -1, 0, now=0.0)  # -1: a broker's "never committed"
    # A partition whose start is not known yet commits nothing.
    assert not guard.may_commit(("raw.phone", 0), None, 0, now=0.0)


def test_a_commit_held_for_long_reads_the_partition_again_from_its_base() -> None:
    guard = _guard({("raw.web", 0): 6})
    tp = ("raw.web", 0)
    assert not guard.may_commit(tp, None, 8, now=100.0)
    assert guard.held(now=100.0 + HOLD_SECONDS - 1) == {}
    assert guard.held(now=100.0 + HOLD_SECONDS) == {tp: 6}
    assert guard.held(now=101.0 + HOLD_SECONDS) == {}  # at most once per HOLD_SECONDS
    assert guard.may_commit(tp, None, 6, now=120.0)
    assert guard.held(now=200.0) == {}


def test_records_kept_on_purpose_hold_the_commit_without_counting_as_missing() -> None:
    guard = _guard({("raw.web", 0): 6})
    tp = ("raw.web", 0)
    guard.defer(tp, 6)
    guard.defer(tp, 7)
    # 6 and 7 are held by the reconstruct stage (alignment): the commit waits, nothing is read again.
    assert not guard.may_commit(tp, None, 8, now=100.0)
    assert guard.held(now=100.0 + 10 * HOLD_SECONDS) == {}
    # A missing record among them is still missing.
    guard.undefer(tp, 7)
    assert not guard.may_commit(tp, None, 8, now=200.0)
    assert guard.held(now=200.0 + HOLD_SECONDS) == {tp: 6}
    # A new assignment forgets what was kept: the records are read again.
    guard.assigned([tp])
    guard.learn({tp: 6})
    assert not guard.may_commit(tp, None, 7, now=300.0)
    assert guard.held(now=300.0 + HOLD_SECONDS) == {tp: 6}


def test_records_on_the_broker_that_stop_arriving_are_read_again_from_the_commit() -> None:
    """The partition's last record was dropped in flight: no gap, no held commit, only the broker shows it."""
    guard = _guard({("raw.phone", 0): 0, ("raw.web", 0): 0})
    phone, web = ("raw.phone", 0), ("raw.web", 0)
    # phone: records 0..13 taken and committed, 14 on the broker never arrives; web: caught up.
    ticks = [100.0 + 2 * n for n in range(20)]
    found = {}
    for now in ticks:
        found |= guard.stuck(now, {phone: (14, 15, 14), web: (40, 40, 40)})
        if found:
            break
    assert found == {phone: 14}
    assert now >= 100.0 + STUCK_SECONDS
    # A loop blocked for a minute by one long fold ticks once: not stuck.
    guard = _guard({phone: 0})
    assert guard.stuck(0.0, {phone: (14, 15, 14)}) == {}
    assert guard.stuck(60.0, {phone: (14, 15, 14)}) == {}
    # Records arriving, however slowly, are not stuck.
    guard = _guard({phone: 0})
    assert all(guard.stuck(2.0 * n, {phone: (n, 500, 0)}) == {} for n in range(40))
    # A partition paused on purpose is left out while paused, and watched afresh once it is back.
    guard = _guard({phone: 0})
    assert all(guard.stuck(2.0 * n, {phone: (14, 15, 14)}) == {} for n in range(4))
    assert guard.stuck(100.0, {}) == {}  # paused for 90 s
    assert all(guard.stuck(100.0 + 2 * n, {phone: (14, 15, 14)}) == {} for n in range(10))
    assert guard.stuck(100.0 + STUCK_SECONDS, {phone: (14, 15, 14)}) == {phone: 14}


def test_faust_s_consumer_commits_no_record_its_stages_did_not_take(dsn: str) -> None:
    """Faust's own bookkeeping with the guard; without it each case commits past an unprocessed record."""
    topics = Topics("guarded")
    app = create_app(Settings(dsn=dsn), StreamConfig(bootstrap="127.0.0.1:1", topics=topics, web_port=None))
    consumer, guard = app.consumer, app.commit_guard
    tp = TP(topics.raw("web"), 0)
    guard.assigned([tp])
    guard.learn({tp: 6})
    app.topics.acking_topics.add(tp.topic)  # as Faust does when the agents subscribe

    # A skipped record (never taken by a stage) is acknowledged by Faust: it does not count.
    skipped = FaustMessage(tp.topic, 0, 6, 0.0, None, None, b"", b"", None, tp=tp)
    assert not consumer.ack(skipped)
    # Records 7..9 processed, 6 not: Faust would commit 10 (the partition was never committed).
    for offset in (7, 8, 9):
        message = FaustMessage(tp.topic, 0, offset, 0.0, None, None, b"", b"", None, tp=tp)
        guard.took([message])
        assert consumer.ack(message)
    assert consumer._new_offset(tp) is None
    # Committed at 6, one missing head record: Faust's own check lets one through (`> 1`).
    consumer._committed_offset[tp] = 6
    assert consumer._new_offset(tp) is None
    # A jump in fetched offsets is not taken as acknowledged records.
    asyncio.run(consumer._add_gap(tp, 6, 6))
    assert not consumer._gap[tp]
    # Record 6 read again and processed: now everything up to 9 is committed.
    again = FaustMessage(tp.topic, 0, 6, 0.0, None, None, b"", b"", None, tp=tp)
    guard.took([again])
    assert consumer.ack(again)
    assert consumer._new_offset(tp) == 10


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
