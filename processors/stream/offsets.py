"""A guard against Faust skipping records around a rebalance.

Faust (faust-streaming 0.11) skips records its stream pulls while flow
control is paused or from an older group generation, and acknowledges them
(`Stream._py_aiter`). If a commit lands before the post-rebalance seek, the
committed offset moves past records nobody processed, and the seek then
starts after them: they are lost (faust-streaming issues #216, #221, #312 are
the same family; the failover test caught one such loss).

The guard remembers each newly assigned partition's committed offset, read
from the broker when the partitions are assigned, and checks the first record
the stage then sees on it. A first record beyond that offset means records were
skipped: the stage seeks back and reads them again. What it reads twice is
harmless downstream (touchpoints are deduplicated by event id, dead letters by
fingerprint).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

Partition = tuple[str, int]


class FirstOffsets:
    """Per newly assigned partition, the offset its first record must have."""

    def __init__(self) -> None:
        self._expected: dict[Partition, int] = {}

    def expect(self, committed: Mapping[Partition, int]) -> None:
        """A new assignment: these partitions must start at these offsets (others are not checked)."""
        self._expected = {tp: offset for tp, offset in committed.items() if offset >= 0}

    def skipped(self, records: Iterable[tuple[Partition, int]]) -> dict[Partition, int]:
        """Partitions whose first record came after the expected offset, with the offset to go back to."""
        rewind: dict[Partition, int] = {}
        for tp, offset in records:
            expected = self._expected.pop(tp, None)
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
