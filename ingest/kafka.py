"""kafka-python clients shared by the producers and the stream stages: topic layout and the producer.

Topics are created explicitly, never by a broker's auto-creation: the raw and
dead-letter topics get the deployment's partition count (they scale with the
workers), while the touchpoints and state topics must have exactly one
partition (one owner of the identity graph, one ordered change stream for the
sink; see docs/stream.md). A broker that auto-created them with more
partitions would silently break ordering, so `ensure_topics` refuses that.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Mapping
from typing import Any

from kafka import KafkaAdminClient, KafkaProducer
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

from .topics import Topics

DEFAULT_PARTITIONS = 6
PARTITIONS_ENV = "JOURNEYS_PARTITIONS"


REPLICATION_ENV = "JOURNEYS_REPLICATION_FACTOR"


def _whole_number(name: str, default: int, environ: Mapping[str, str] | None) -> int:
    raw = (os.environ if environ is None else environ).get(name, "").strip()
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"{name} must be a whole number, got {raw!r}") from None


def partitions_from_env(environ: Mapping[str, str] | None = None) -> int:
    """Partitions of the raw and dead-letter topics: $JOURNEYS_PARTITIONS, default 6."""
    return _whole_number(PARTITIONS_ENV, DEFAULT_PARTITIONS, environ)


def replication_from_env(environ: Mapping[str, str] | None = None) -> int:
    """Replication factor of the topics the app creates: $JOURNEYS_REPLICATION_FACTOR, default 1."""
    return _whole_number(REPLICATION_ENV, 1, environ)


class TopicLayoutError(RuntimeError):
    """An existing topic has a partition count the stream stack cannot work with."""


def topic_layout(topics: Topics, partitions: int = DEFAULT_PARTITIONS) -> dict[str, int]:
    """Every topic of one deployment with its partition count."""
    if partitions < 1:
        raise ValueError(f"partitions must be at least 1, got {partitions}")
    layout = {name: partitions for name in topics.all_raw}
    layout[topics.dead_letters] = partitions
    layout[topics.touchpoints] = 1
    layout[topics.state] = 1
    layout[topics.progress] = 1
    return layout


# Topic settings beyond the partition count: progress reports are of use for seconds; an hour of
# them is plenty to look at and keeps the topic small.
TOPIC_CONFIGS: dict[str, dict[str, str]] = {"progress": {"retention.ms": str(3600 * 1000)}}


def _admin(bootstrap: str, timeout: float) -> KafkaAdminClient:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return KafkaAdminClient(
                bootstrap_servers=bootstrap,
                client_id="journeys-admin",
                bootstrap_timeout_ms=max(1000, int(min(timeout, 10.0) * 1000)),
            )
        except KafkaError:  # broker not up yet
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def ensure_topics(
    bootstrap: str,
    topics: Topics,
    partitions: int | None = None,
    replication_factor: int | None = None,
    timeout: float = 30.0,
) -> dict[str, int]:
    """Create missing topics; check the single-partition ones. Returns each topic's partition count.

    Safe to call from every process at start-up: creating an existing topic is
    a no-op, and raw topics that already have another partition count are
    left as the operator made them.
    """
    layout = topic_layout(topics, partitions_from_env() if partitions is None else partitions)
    replicas = replication_from_env() if replication_factor is None else replication_factor
    admin = _admin(bootstrap, timeout)
    try:
        existing = set(admin.list_topics())
        configs = {getattr(topics, kind): settings for kind, settings in TOPIC_CONFIGS.items()}
        missing = [
            NewTopic(name, count, replicas, topic_configs=configs.get(name, {}))
            for name, count in layout.items()
            if name not in existing
        ]
        if missing:
            with contextlib.suppress(TopicAlreadyExistsError):  # another process won the race
                admin.create_topics(missing, timeout_ms=int(timeout * 1000))
        counts = _partition_counts(admin, list(layout), timeout)
    finally:
        admin.close()
    for name in (topics.touchpoints, topics.state, topics.progress):
        if counts[name] != 1:
            raise TopicLayoutError(
                f"topic {name} has {counts[name]} partitions; it must have exactly 1 "
                "(delete it, or use another JOURNEYS_TOPIC_PREFIX)"
            )
    return counts


def _partition_counts(admin: KafkaAdminClient, names: list[str], timeout: float) -> dict[str, int]:
    # A just-created topic may take a moment to appear in the metadata.
    deadline = time.monotonic() + timeout
    while True:
        described = {d["name"]: len(d["partitions"]) for d in admin.describe_topics(names)}
        if all(described.get(name) for name in names) or time.monotonic() > deadline:
            missing = [name for name in names if not described.get(name)]
            if missing:
                raise KafkaError(f"topics not visible after creation: {', '.join(missing)}")
            return described
        time.sleep(0.2)


def quiet_client_logs() -> None:
    """Hold kafka-python's loggers at INFO or above, whatever the root level.

    At DEBUG kafka-python logs every record it sends (`Sending (key=… value=…)`)
    and every request's bytes; raw records carry email addresses and phone
    numbers in the clear, so a DEBUG deployment would write them to its logs.
    """
    client = logging.getLogger("kafka")
    if client.level < logging.INFO:
        client.setLevel(logging.INFO)


def make_producer(bootstrap: str, **overrides: Any) -> KafkaProducer:
    """An idempotent producer: acks from all in-sync replicas, retries without duplicates or reordering."""
    quiet_client_logs()
    options: dict[str, Any] = {
        "bootstrap_servers": bootstrap,
        "client_id": "journeys-producer",
        "acks": "all",
        "enable_idempotence": True,
        "linger_ms": 20,
        "batch_size": 256 * 1024,
        "max_in_flight_requests_per_connection": 5,
        "retries": 2**31 - 1,
        "delivery_timeout_ms": 120_000,
    }
    options |= overrides
    return KafkaProducer(**options)
