"""The commit guard: Kafka offsets are never committed past a record the stages have not processed.

Faust (faust-streaming 0.15) can commit past unprocessed records around a
rebalance, which loses them when the worker dies before reading them again
(faust-streaming issues #216, #221, #312 are the same family). Reading its
consumer, four paths lead there, and the failover and crash tests hit them:

1. it *acknowledges records it skips* — records its stream pulls while flow
   control is paused or from an older group generation (`Stream._py_aiter`);
   their offsets then count toward the next commit although the re-read copies
   are still waiting in the queue;
2. its commit takes the first run of consecutive acknowledged offsets
   *wherever it starts* when the partition was never committed (or at 0), and
   lets *one missing record* at the head through otherwise
   (`Consumer._new_offset`: `min(acked) - committed > 1`);
3. it treats a jump in fetched offsets as a *gap* that counts as acknowledged
   (meant for compacted and transactional topics); after a seek back, records
   fetched before the seek make such a jump;
4. the first record after an assignment can come after the committed offset
   (records dropped in flight), with nothing asking for them again.

The guard closes each: an acknowledgement counts only for a record a stage
actually took (`took` / `may_ack`); a commit must start exactly at the
partition's base — its committed offset, or at an assignment the offset the
group must start from (`start_offsets`) — so a missing head holds it
(`may_commit`); gaps are not taken as acknowledged on the stream topics (their
producers, `journeys produce`, the collector and the workers, are
non-transactional and the topics are not compacted, so offsets are
contiguous); a first record beyond the base, a commit held for
`HOLD_SECONDS`, or records on the broker beyond the base that stop arriving
for `STUCK_SECONDS`, make the stage read the partition again from its base
(`skipped`, `held`, `stuck`). What is read twice is harmless downstream: touchpoints
are deduplicated by event id, dead letters by fingerprint.

A stage may keep a record on purpose and acknowledge it later (the reconstruct
stage holds touchpoints for event-time alignment, `alignment.py`): such
offsets are *deferred* (`defer` / `undefer`), and a head made only of them
holds the commit without counting as missing. A partition paused on purpose
is left out of the stuck check while paused (the caller leaves it out of
`positions`) and watched afresh once it is back.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

Partition = tuple[str, int]  # Faust's TP is a namedtuple of the same shape, so it works as a key


# How long a commit may be held by a missing head before the partition is read again from its base:
# longer than a batch takes to go through a stage, short enough that a backlog does not pile up.
HOLD_SECONDS = 10.0
# How long a partition may have records on the broker beyond everything taken and committed with
# none arriving before it is read again from its base; seen on this many timer ticks, so a
# loop blocked by one long fold (no ticks meanwhile) does not count as a stuck partition.
STUCK_SECONDS = 30.0
STUCK_TICKS = 5


class CommitGuard:
    """Per assigned stream partition: where commits must start, and which records a stage took."""

    def __init__(self, topics: Iterable[str]) -> None:
        self.topics = frozenset(topics)
        self._base: dict[Partition, int] = {}  # where the partition's offsets must start at this assignment
        self._first: dict[Partition, int] = {}  # partitions whose first record has not been seen yet
        # Messages a stage took and has not acknowledged yet, by id(); held, so no id() is reused.
        self._taken: dict[int, Any] = {}
        self._held_since: dict[Partition, float] = {}
        self._unknown: set[Partition] = set()
        self._stuck: dict[Partition, tuple[int, float, int]] = {}  # (next offset taken, since, ticks)
        # Offsets a stage took and deliberately acknowledges later (touchpoints the reconstruct
        # stage holds for event-time alignment): a head made of these is not missing.
        self._deferred: dict[Partition, set[int]] = {}

    def guards(self, topic: str) -> bool:
        return topic in self.topics

    def assigned(self, partitions: Iterable[Partition]) -> None:
        """A new assignment of these stream partitions; where each starts follows (`learn`)."""
        self._base.clear()
        self._first.clear()
        self._unknown = set(partitions)
        self._held_since.clear()
        self._stuck.clear()
        self._taken.clear()
        self._deferred.clear()

    def learn(self, starts: Mapping[Partition, int]) -> None:
        """Where assigned partitions start (`start_offsets`, read from the broker)."""
        for tp, offset in starts.items():
            if tp in self._unknown and offset >= 0:
                self._unknown.discard(tp)
                self._base[tp] = self._first[tp] = offset

    def base(self, tp: Partition) -> int | None:
        """Where the partition's offsets start at this assignment (its committed offset once known)."""
        return self._base.get(tp)

    def defer(self, tp: Partition, offset: int) -> None:
        """A stage keeps this record and acknowledges it later: it must not count as missing meanwhile."""
        self._deferred.setdefault(tp, set()).add(offset)

    def undefer(self, tp: Partition, offset: int) -> None:
        """A deferred record is done with (acknowledged now)."""
        deferred = self._deferred.get(tp)
        if deferred is not None:
            deferred.discard(offset)

    @property
    def unknown(self) -> set[Partition]:
        """Assigned partitions whose start is not known yet: their commits wait for it."""
        return set(self._unknown)

    def unseen(self) -> set[Partition]:
        """Partitions whose first record since the assignment has not been seen yet."""
        return set(self._first)

    def took(self, messages: Iterable[Any]) -> None:
        """A stage took these messages: their acknowledgements, once it is done with them, count."""
        for message in messages:
            self._taken[id(message)] = message

    def may_ack(self, message: Any) -> bool:
        """Whether an acknowledgement of this message may count toward a commit.

        Only for a record a stage took: Faust also acknowledges records it skipped.
        """
        if message.topic not in self.topics:
            return True
        return self._taken.pop(id(message), None) is not None

    def may_commit(self, tp: Partition, committed: int | None, lowest_acked: int, now: float) -> bool:
        """Whether the acknowledged offsets, the lowest being `lowest_acked`, may be committed.

        Only when they start exactly at the partition's base: the committed
        offset, else the offset the assignment started from. A missing head (or
        an unknown base) holds the commit; `held` tells when to read again.
        """
        if committed is not None and committed >= 0:  # some brokers answer -1 for "never committed"
            self._base[tp] = committed
        base = self._base.get(tp)
        if base is not None and lowest_acked <= base:
            self._held_since.pop(tp, None)
            return True
        deferred = self._deferred.get(tp)
        if base is not None and deferred and all(o in deferred for o in range(base, lowest_acked)):
            self._held_since.pop(tp, None)  # held by records a stage keeps on purpose, none missing
            return False
        self._held_since.setdefault(tp, now)
        return False

    def held(self, now: float) -> dict[Partition, int]:
        """Partitions whose commit a missing head held for `HOLD_SECONDS`, with the base to read from."""
        rewind: dict[Partition, int] = {}
        for tp, since in list(self._held_since.items()):
            base = self._base.get(tp)
            if base is not None and now - since >= HOLD_SECONDS:
                rewind[tp] = base
                self._held_since[tp] = now  # read again at most once per HOLD_SECONDS
        return rewind

    def stuck(
        self, now: float, positions: Mapping[Partition, tuple[int, int, int | None]]
    ) -> dict[Partition, int]:
        """Partitions whose records beyond the base stopped arriving, with the base to read from again.

        `positions` maps each assigned stream partition to (the next offset a
        stage took, the broker's high-water mark, the committed offset if this
        consumer committed or knew one). A record dropped in flight
        that was its partition's last leaves no gap and holds no commit: the
        commit stays before it (so a restart reads it), but this worker would
        not read it until the next rebalance. Asked every few seconds.
        """
        rewind: dict[Partition, int] = {}
        for tp in self._stuck.keys() - positions.keys():
            del self._stuck[tp]  # not asked about (paused on purpose): watched afresh when it is again
        for tp, (taken, highwater, committed) in positions.items():
            base = committed if committed is not None and committed >= 0 else self._base.get(tp)
            if base is None or highwater <= max(taken, base):
                self._stuck.pop(tp, None)
                continue
            seen = self._stuck.get(tp)
            if seen is None or seen[0] != taken:
                self._stuck[tp] = (taken, now, 1)
                continue
            _, since, ticks = seen
            if now - since >= STUCK_SECONDS and ticks + 1 >= STUCK_TICKS:
                rewind[tp] = base
                self._stuck[tp] = (taken, now, 1)  # read again at most once per STUCK_SECONDS
            else:
                self._stuck[tp] = (taken, since, ticks + 1)
        return rewind

    def skipped(self, records: Iterable[tuple[Partition, int]]) -> dict[Partition, int]:
        """Partitions whose first record came after their base, with the offset to go back to."""
        rewind: dict[Partition, int] = {}
        for tp, offset in records:
            expected = self._first.pop(tp, None)
            if expected is not None and offset > expected:
                rewind[tp] = expected
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
