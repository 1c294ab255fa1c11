"""What travels on the internal topics, encoded as JSON (orjson).

- `touchpoints`: a JSON array of up to 500 canonical touchpoints
  (`Touchpoint.model_dump_json`), keyed by the first one's event id; a single
  JSON object (one touchpoint) is read as well. This topic is the stream
  stack's event log. Batches, not single touchpoints, because Faust's cost
  per message dominates otherwise (profiled: about a third of the worker's time).
- `state`: what the reconstruct stage changed, as row values the ClickHouse sink
  writes unchanged (`processors.sinks.clickhouse.*_values`):
  - `{"kind": "customers", "customers": [[customer_id, journeys, touchpoints], ...]}`:
    changed customers' complete journeys and touchpoints, packed up to about
    256 KB a message and keyed by the first customer id (empty lists: the
    customer was absorbed by a merge). The sink also reads the older
    one-customer form `{"kind": "customer", "customer_id", "journeys", "touchpoints"}`;
  - `{"kind": "events", "events": [canonical touchpoint JSON, ...]}`: new events;
  - `{"kind": "identity", "identities", "merges_added", "merges_removed",
    "conflicts_added", "conflicts_removed"}`;
  - `{"kind": "snapshot", "phase": "begin" | "end"}` around the messages of a
    rebuilt stage's complete state (`snapshot_messages`): at the end the sink
    deletes every journey, merge and conflict the snapshot did not contain.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime
from typing import Any

import orjson

from journeys.live import BatchResult
from journeys.reconstruct import Reconstruction
from journeys.touchpoint import Touchpoint
from processors.sinks.clickhouse import conflict_values, journey_values, merge_values, touchpoint_values

CHUNK = 500  # rows (or touchpoints) per message: well under Kafka's 1 MB default message size
STATE_BYTES = 256 * 1024  # customers are packed into a state message up to about this size


def encode_touchpoint(touchpoint: Touchpoint) -> bytes:
    return touchpoint.model_dump_json().encode("utf-8")


def decode_touchpoint(raw: bytes) -> Touchpoint:
    """Raises pydantic's ValidationError for anything that is not a canonical touchpoint."""
    return Touchpoint.model_validate_json(raw)


def encode_touchpoints(touchpoints: Sequence[Touchpoint]) -> Iterator[tuple[bytes, bytes]]:
    """(key, value) messages carrying the touchpoints, CHUNK at a time."""
    for start in range(0, len(touchpoints), CHUNK):
        chunk = touchpoints[start : start + CHUNK]
        yield chunk[0].event_id.encode(), join_touchpoints([encode_touchpoint(tp) for tp in chunk])


class Handoff:
    """Touchpoint messages the normalise stage sent, kept for the reconstruct stage of the same process.

    When one worker runs both stages (the usual case), the reconstruct stage
    would otherwise parse and validate every touchpoint a second time: the
    most expensive part of its input. It looks the message value (the exact
    bytes it read) up here and takes the already validated touchpoints; a
    message it does not find (sent by another worker, or before a restart) is
    decoded and validated as before. Bounded: the oldest entries go first when
    this worker does not own the touchpoints partition.
    """

    def __init__(self, limit: int = 64) -> None:
        self.limit = limit
        self._messages: OrderedDict[bytes, tuple[list[Touchpoint], list[bytes]]] = OrderedDict()

    def encode(self, touchpoints: Sequence[Touchpoint]) -> Iterator[tuple[bytes, bytes]]:
        """`encode_touchpoints`, remembering each message's touchpoints and their encodings."""
        for start in range(0, len(touchpoints), CHUNK):
            chunk = list(touchpoints[start : start + CHUNK])
            raws = [encode_touchpoint(tp) for tp in chunk]
            value = join_touchpoints(raws)
            self._messages[value] = (chunk, raws)
            while len(self._messages) > self.limit:
                self._messages.popitem(last=False)
            yield chunk[0].event_id.encode(), value

    def take(self, value: bytes | None) -> tuple[list[Touchpoint], list[bytes]] | None:
        """The touchpoints and encodings of a message this process sent, or None."""
        return self._messages.pop(value, None) if value else None

    def __len__(self) -> int:
        return len(self._messages)


def join_touchpoints(raw_touchpoints: Iterable[bytes]) -> bytes:
    """A JSON array of already encoded touchpoints."""
    return b"[" + b",".join(raw_touchpoints) + b"]"


def split_touchpoints(value: bytes | None) -> list[bytes]:
    """The encoded touchpoints in a touchpoints message (an array, or one object).

    Raises ValueError with the reason for a message that is neither; each
    element is still validated on its own (`decode_touchpoint`), so one bad
    element does not take its neighbours with it.
    """
    try:
        parsed = orjson.loads(value or b"")
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"not JSON: {exc}") from None
    if isinstance(parsed, dict):
        return [value or b""]
    if isinstance(parsed, list):
        return [orjson.dumps(element) for element in parsed]
    raise ValueError(f"a JSON {type(parsed).__name__}, not a touchpoint or an array of them")


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
    # Changed customers travel many to a message: one message per customer made Faust's and the
    # sink's per-message cost dominate (hundreds of customers change in every batch).
    packed: list[orjson.Fragment] = []
    size, key = 0, b""
    for customer_id, journeys in result.journeys.items():
        touchpoints = [row for j in journeys for row in touchpoint_values(reconstruction, j, now)]
        entry = orjson.dumps([customer_id, [journey_values(j) for j in journeys], touchpoints])
        if packed and size + len(entry) > STATE_BYTES:
            yield key, orjson.dumps({"kind": "customers", "customers": packed})
            packed, size = [], 0
        if not packed:
            key = customer_id.encode()
        packed.append(orjson.Fragment(entry))
        size += len(entry)
    if packed:
        yield key, orjson.dumps({"kind": "customers", "customers": packed})


SNAPSHOT_BEGIN = orjson.dumps({"kind": "snapshot", "phase": "begin"})
SNAPSHOT_END = orjson.dumps({"kind": "snapshot", "phase": "end"})


def snapshot_messages(
    result: BatchResult, reconstruction: Reconstruction, raw_events: dict[str, bytes], now: datetime
) -> Iterator[tuple[bytes, bytes]]:
    """`state_messages` of a complete state (a rebuild), framed so the sink can drop what it lacks.

    A stage rebuilt after a failover cannot know which customers its
    predecessor published that no longer exist (a link it admitted but did not
    live to publish merged them away): only a complete snapshot tells.
    """
    yield b"snapshot", SNAPSHOT_BEGIN
    yield from state_messages(result, reconstruction, raw_events, now)
    yield b"snapshot", SNAPSHOT_END
