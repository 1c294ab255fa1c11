"""Reading back what landed on the real broker, for the producer and collector tests.

(The suite runs with --import-mode=importlib, so helpers are fixtures rather
than an importable module.)
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
from kafka import KafkaConsumer, TopicPartition

ReadTopics = Callable[..., list[Any]]


def read_topics(bootstrap: str, *topics: str, count: int | None = None, idle: float = 1.0) -> list[Any]:
    """Every message on `topics` so far, by topic, partition and offset.

    With `count`, it stops as soon as that many arrived (plus one short poll, so
    a duplicate would show); otherwise once nothing came for `idle` seconds.
    Topics whose end offsets are all 0 are empty: that costs no waiting. (Tansu
    under-reports end offsets of multi-record batches, so they cannot serve as
    the stopping point, but a partition holding records never reports 0.)
    """
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False
    )
    try:
        partitions = [
            TopicPartition(topic, partition)
            for topic in topics
            for partition in sorted(consumer.partitions_for_topic(topic) or ())
        ]
        if not partitions:
            return []
        consumer.assign(partitions)
        if not count and not any(consumer.end_offsets(partitions).values()):
            return []
        messages: list[Any] = []
        deadline = time.monotonic() + 10
        last = time.monotonic()
        while time.monotonic() < deadline:
            polled = [m for batch in consumer.poll(timeout_ms=100).values() for m in batch]
            if polled:
                messages.extend(polled)
                last = time.monotonic()
            if count and len(messages) >= count:
                messages.extend(m for batch in consumer.poll(timeout_ms=200).values() for m in batch)
                break
            if not count and time.monotonic() - last > idle:
                break
        return sorted(messages, key=lambda m: (topics.index(m.topic), m.partition, m.offset))
    finally:
        consumer.close()


@pytest.fixture
def read_back() -> ReadTopics:
    """`read_back(bootstrap, *topics, count=None)`: every message on those topics so far."""
    return read_topics
