"""What travels on the internal topics, encoded as JSON (orjson).

- `touchpoints`: one canonical touchpoint (`Touchpoint.model_dump_json`), keyed
  by event_id. This topic is the stream stack's event log.
- `state`: what the reconstruct stage changed, as row values the ClickHouse sink
  writes unchanged (`processors.sinks.clickhouse.*_values`):
  - `{"kind": "customer", "customer_id", "journeys": [...], "touchpoints": [...]}`,
    keyed by customer id (empty lists: the customer was absorbed by a merge);
  - `{"kind": "events", "events": [canonical touchpoint JSON, ...]}`: new events;
  - `{"kind": "identity", "identities", "merges_added", "merges_removed",
    "conflicts_added", "conflicts_removed"}`.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Any

import orjson

from journeys.live import BatchResult
from journeys.reconstruct import Reconstruction
from journeys.touchpoint import Touchpoint
from processors.sinks.clickhouse import conflict_values, journey_values, merge_values, touchpoint_values

CHUNK = 500  # rows per events/identity message: well under Kafka's 1 MB default message size


def encode_touchpoint(touchpoint: Touchpoint) -> bytes:
    return touchpoint.model_dump_json().encode("utf-8")


def decode_touchpoint(raw: bytes) -> Touchpoint:
    """Raises pydantic's ValidationError for anything that is not a canonical touchpoint."""
    return Touchpoint.model_validate_json(raw)


def state_messages(
    result: BatchResult, reconstruction: Reconstruction, raw_events: dict[str, bytes], now: datetime
) -> Iterator[tuple[bytes, bytes]]:
    """(key, value) messages for the state topic describing one batch's changes."""
    for start in range(0, len(result.new_touchpoints), CHUNK):
        chunk = result.new_touchpoints[start : start + CHUNK]
        events = [orjson.Fragment(raw_events[tp.event_id]) for tp in chunk]
        yield chunk[0].event_id.encode(), orjson.dumps({"kind": "events", "events": events})
    identities = [[t, v, customer] for (t, v), customer in sorted(result.identities.items())]
    logs: dict[str, list[Any]] = {
        "merges_added": [merge_values(m) for m in result.merges_added],
        "merges_removed": [merge_values(m) for m in result.merges_removed],
        "conflicts_added": [conflict_values(c) for c in result.conflicts_added],
        "conflicts_removed": [conflict_values(c) for c in result.conflicts_removed],
    }
    if identities or any(logs.values()):
        first = True
        for start in range(0, max(len(identities), 1), CHUNK):
            message: dict[str, Any] = {"kind": "identity", "identities": identities[start : start + CHUNK]}
            if first:
                message.update(logs)  # the logs are small: they ride on the first chunk
                first = False
            yield b"identity", orjson.dumps(message)
    for customer_id, journeys in result.journeys.items():
        touchpoints = [row for j in journeys for row in touchpoint_values(reconstruction, j, now)]
        yield (
            customer_id.encode(),
            orjson.dumps(
                {
                    "kind": "customer",
                    "customer_id": customer_id,
                    "journeys": [journey_values(j) for j in journeys],
                    "touchpoints": touchpoints,
                }
            ),
        )
