"""A guard against Faust skipping records: around a rebalance, and single ones mid-partition.

Faust (faust-streaming 0.11) skips records its stream pulls while flow
control is paused or from an older group generation, and acknowledges them
(`Stream._py_aiter`). If a commit lands before the post-rebalance seek, the
committed offset moves past records nobody processed, and the seek then
starts after them: they are lost (faust-streaming issues #216, #221, #312 are
the same family; the failover test caught one such loss).

The guard remembers each newly assigned partition's committed offset (or, for
a partition the group never committed on, its beginning), read from the broker
when the partitions are assigned, and checks the first record
the stage then sees on it. A first record beyond that offset means records were
skipped: the stage seeks back and reads them again. When the skipped records
were the partition's last ones, no later record shows the gap; so for a while
after the assignment the stage also asks the broker for the group's committed
offsets, and a partition whose commit moved past the expected offset before the
stage saw any of its records is rewound the same way (the failover test lost
the last record of a partition like that). What it reads twice is harmless
downstream (touchpoints are deduplicated by event id, dead letters by
fingerprint).

Faust also loses single records in the middle of a partition (faust-streaming
0.15; the redelivery test's replay showed it about one run in three on a busy
machine: offsets 4 then 6, right after an assignment). `Consumer._drain_messages`
hands each fetched message to the streams with `wait_first(callback(message),
suspend_flow.wait())` and marks it read whichever finished first, so a delivery
still waiting for room in a stream's buffer when the flow is suspended (around
a rebalance or a table recovery) is cancelled and never made. And
`Consumer._new_offset` refuses to commit past a missing first offset only when
more than one is missing (`min(acked) - committed > 1`, committed being the
next offset to read), so the commit moves past it. So the guard keeps, per
partition, the offset the stage must read next: any record beyond it (the first
one after an assignment, or any later one) makes the stage seek back to it, and
it stays expected until it is read. An offset that a read from a seek back to
it still passes `MAX_REWINDS` times is taken for one the partition does not
have (a transaction marker, should a transactional producer ever write there).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

Partition = tuple[str, int]


# How long after an assignment commits are compared: Faust commits every few seconds, so a skip
# shows well within this; later, a partition that never got a record is simply quiet.
WATCH_SECONDS = 60.0
# Seeks back to one missing offset, each read from the seek on, before it counts as absent.
MAX_REWINDS = 3


class NextOffsets:
    """Per assigned partition, the offset its next record must have; and which have shown no record yet."""

    def __init__(self) -> None:
        self._expected: dict[Partition, int] = {}  # no record seen since the assignment
        self._next: dict[Partition, int] = {}
        self._rewinds: Counter[tuple[Partition, int]] = Counter()
        # Partitions sought back, with the highest offset read since: records above it were handed
        # to the stage before the seek took effect; one at or below it is read from the seek on.
        self._sought: dict[Partition, int] = {}
        self._watch_until = 0.0

    def expect(self, committed: Mapping[Partition, int], now: float = 0.0) -> None:
        """A new assignment: these partitions must start at these offsets (others are not checked).

        `now` (a monotonic clock) starts the window in which `awaiting` reports them.
        """
        self._expected = {tp: offset for tp, offset in committed.items() if offset >= 0}
        self._next = dict(self._expected)
        self._rewinds.clear()
        self._sought.clear()
        self._watch_until = now + WATCH_SECONDS

    def unseen(self) -> set[Partition]:
        """Partitions whose first record since the assignment has not been seen yet."""
        return set(self._expected)

    def awaiting(self, now: float) -> list[Partition]:
        """Partitions whose first record has not been seen yet, while the watch window lasts."""
        return list(self._expected) if now < self._watch_until else []

    def overtaken(self, committed: Mapping[Partition, int]) -> dict[Partition, int]:
        """Partitions still awaiting their first record whose commit moved past the expected offset.

        The stage never processed a record there, yet the group committed beyond
        it: records were acknowledged unprocessed. Returns the offsets to go back to.
        """
        rewind: dict[Partition, int] = {}
        for tp, offset in committed.items():
            expected = self._expected.get(tp)
            if expected is not None and offset > expected:
                rewind[tp] = self._expected.pop(tp)
        return rewind

    def skipped(self, records: Iterable[tuple[Partition, int]]) -> dict[Partition, int]:
        """Partitions on which records were skipped, with the offset to go back to.

        `records` are (partition, offset) in the order the stage read them. A record
        beyond the offset the partition must read next (its committed offset for the
        first record after an assignment, else one past the last record read) means
        the records in between never reached the stage. That offset stays the one
        to read next until it is read (or `MAX_REWINDS` reads from a seek back to it
        went past it); records read again below it change nothing, and neither do
        records the stage was handed before a seek took effect.
        """
        rewind: dict[Partition, int] = {}
        for tp, offset in records:
            self._expected.pop(tp, None)
            sought = self._sought.get(tp)
            if sought is not None:
                if offset > sought:  # handed over before the seek took effect
                    self._sought[tp] = offset
                    continue
                del self._sought[tp]  # read from the seek on
            wanted = self._next.get(tp)
            if wanted is not None and offset > wanted and self._rewinds[(tp, wanted)] < MAX_REWINDS:
                self._rewinds[(tp, wanted)] += 1
                self._sought[tp] = offset
                rewind[tp] = wanted
            else:
                self._next[tp] = offset + 1 if wanted is None else max(wanted, offset + 1)
        return rewind


def committed_offsets(bootstrap: str, group_id: str, partitions: Iterable[Partition]) -> dict[Partition, int]:
    """The group's committed offsets for these partitions, from the broker (blocking; run it in a thread)."""
    from kafka import KafkaAdminClient, TopicPartition

    wanted = [TopicPartition(topic, partition) for topic, partition in partitions]
    if not wanted:
        return {}
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id=f"{group_id}-offsets")
    try:
        found: Any = admin.list_group_offsets({group_id: wanted}).get(group_id, {})
    finally:
        admin.close()
    return {(tp.topic, tp.partition): meta.offset for tp, meta in found.items() if meta is not None}


def start_offsets(bootstrap: str, group_id: str, partitions: Iterable[Partition]) -> dict[Partition, int]:
    """Where the group must start each partition: its committed offset, else the partition's beginning.

    A partition nobody committed on is read from its earliest offset (the
    worker's offset reset policy), so its first record must be there too: the
    guard checks such partitions as well (blocking; run it in a thread).
    """
    from kafka import KafkaConsumer, TopicPartition

    wanted = list(partitions)
    offsets = committed_offsets(bootstrap, group_id, wanted)
    never = [
        TopicPartition(topic, partition)
        for topic, partition in wanted
        if offsets.get((topic, partition), -1) < 0
    ]
    if never:
        consumer = KafkaConsumer(bootstrap_servers=bootstrap, client_id=f"{group_id}-offsets")
        try:
            for tp, offset in consumer.beginning_offsets(never).items():
                offsets[(tp.topic, tp.partition)] = offset
        finally:
            consumer.close()
    return offsets
