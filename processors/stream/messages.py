"""What travels on the internal topics, encoded as JSON (orjson).

- `touchpoints`: a JSON array of up to 500 canonical touchpoints
  (`Touchpoint.model_dump_json`), keyed by the first one's event id; a single
  JSON object (one touchpoint) is read as well. This topic is the stream
  stack's event log. Batches, not single touchpoints, because Faust's cost
  per message dominates otherwise (profiled: about a third of the worker's time).
- `state`: what the reconstruct stage changed, as row values the ClickHouse sink
  writes unchanged (`processors.sinks.clickhouse.*_values`):
  - `{"kind": "customers", "customers": [[customer_id, journeys, touchpoints, kept, partial], ...]}`:
    changed customers' changed journeys with their touchpoints, the ids of the
    customer's journeys that did not change since they were last published, and
    the ids of the sent journeys sent in part: their touchpoints here are only
    those that are new or placed anew, the others stay as stored
    (`PublishedJourneys`). Every other journey of the customer is gone (all
    lists empty: the customer was absorbed by a merge). Packed up to about
    256 KB a message, keyed by the first customer id. The sink also reads
    entries without `partial` or `kept` (every journey sent whole) and the
    older one-customer form `{"kind": "customer", "customer_id", "journeys",
    "touchpoints"}`; a sink older than `partial` turns such entries into dead
    letters, so sinks are upgraded before workers;
  - `{"kind": "events", "events": [canonical touchpoint JSON, ...]}`: new events;
  - `{"kind": "identity", "identities", "merges_added", "merges_removed",
    "conflicts_added", "conflicts_removed"}`;
  - `{"kind": "snapshot", "phase": "begin" | "end"}` around the messages of a
    rebuilt stage's complete state (`snapshot_messages`): at the end the sink
    deletes every journey, merge and conflict the snapshot did not contain.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter, OrderedDict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any

import orjson

from journeys.fold import ClassifiedTouchpoint, Journey, PlacedTouchpoint
from journeys.live import BatchResult
from journeys.phases import PhaseRules
from journeys.reconstruct import Reconstruction
from journeys.touchpoint import Channel, CompactTouchpoint, Touchpoint, TouchpointFields, compact_touchpoint
from processors.sinks.clickhouse import (
    JOURNEY_COLUMNS,
    conflict_values,
    journey_values,
    merge_values,
    touchpoint_values,
)

CHUNK = 500  # rows (or touchpoints) per message: well under Kafka's 1 MB default message size
STATE_BYTES = 256 * 1024  # customers are packed into a state message up to about this size


def encode_touchpoint(touchpoint: Touchpoint) -> bytes:
    return touchpoint.model_dump_json().encode("utf-8")


def decode_touchpoint(raw: bytes) -> Touchpoint:
    """Raises pydantic's ValidationError for anything that is not a canonical touchpoint."""
    return Touchpoint.model_validate_json(raw)


# -- the short way in: canonical touchpoint JSON straight to the aggregate's compact form ----------
#
# Every touchpoint on the internal topics was written by a worker from a validated
# touchpoint, so nearly all are canonical already. Validating each through the
# model again (and converting it to the compact form) was most of what the
# reconstruct stage paid for a touchpoint from another worker, and of what the
# sink paid for every event. These read the decoded JSON object into adapter
# fields and take `compact_touchpoint`'s checks; anything of another shape goes
# through the model, which gives its usual `ValidationError`. The tests hold the
# two ways equal.

_TOUCHPOINT_KEYS = frozenset(Touchpoint.model_fields)
_CHANNELS = {channel.value: channel for channel in Channel}
# The timestamp texts the model's and the compact form's JSON give: read the same by both ways.
_UTC_TEXT = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d{3}|\.\d{6})?(?:Z|\+00:00)")


def _utc_time(text: Any) -> Any:
    """A canonical timestamp text as a datetime; anything else as it is (the checks then refuse it)."""
    if type(text) is str and _UTC_TEXT.fullmatch(text) is not None:
        try:
            return datetime.fromisoformat(text)
        except ValueError:  # e.g. a 25th hour: the model says what is wrong
            return text
    return text


def touchpoint_fields(obj: Any) -> TouchpointFields | None:
    """A touchpoint's decoded JSON object as adapter fields, or None if it has another shape."""
    if type(obj) is not dict or not obj.keys() <= _TOUCHPOINT_KEYS:
        return None
    try:
        identifiers = obj["identifiers"]
        if type(identifiers) is not list:
            return None
        keys = []
        for identifier in identifiers:
            if type(identifier) is not dict or len(identifier) != 2:
                return None
            keys.append((identifier["type"], identifier["value"]))
        channel = obj["channel"]
        return TouchpointFields(
            obj["event_id"],
            _utc_time(obj["occurred_at"]),
            _utc_time(obj.get("received_at")),
            _CHANNELS.get(channel) if type(channel) is str else None,
            obj["source"],
            obj["action"],
            keys,
            obj.get("properties", {}),
            obj.get("persona"),
            obj.get("sentiment"),
            obj.get("value"),
            obj.get("currency"),
        )
    except KeyError:  # a required field is missing: the model names it
        return None


def compact_from_object(obj: Any) -> CompactTouchpoint:
    """`CompactTouchpoint.of(decode_touchpoint(orjson.dumps(obj)))`, the short way when `obj` is canonical.

    Raises pydantic's ValidationError for anything that is not a touchpoint.
    """
    fields = touchpoint_fields(obj)
    compact = compact_touchpoint(fields) if fields is not None else None
    return compact if compact is not None else CompactTouchpoint.of(decode_touchpoint(orjson.dumps(obj)))


def classified_from_object(obj: Any, rules: PhaseRules) -> ClassifiedTouchpoint:
    """`ClassifiedTouchpoint.of(decode_touchpoint(orjson.dumps(obj)), rules)`, the short way when canonical.

    Raises pydantic's ValidationError for anything that is not a touchpoint.
    """
    fields = touchpoint_fields(obj)
    step = ClassifiedTouchpoint.of_fields(fields, rules) if fields is not None else None
    return step if step is not None else ClassifiedTouchpoint.of(decode_touchpoint(orjson.dumps(obj)), rules)


def encode_touchpoints(touchpoints: Sequence[Touchpoint]) -> Iterator[tuple[bytes, bytes]]:
    """(key, value) messages carrying the touchpoints, CHUNK at a time."""
    for start in range(0, len(touchpoints), CHUNK):
        chunk = touchpoints[start : start + CHUNK]
        yield chunk[0].event_id.encode(), join_touchpoints([encode_touchpoint(tp) for tp in chunk])


class Handoff:
    """Touchpoint messages the normalise stage sent, kept for the reconstruct stage of the same process.

    When one worker runs both stages (the usual case), the reconstruct stage
    would otherwise decode and classify every touchpoint a second time. It
    looks the message value (the exact bytes it read) up here and takes the
    touchpoints as normalise classified them; a message it does not find (sent
    by another worker, or before a restart) is decoded (`classified_from_object`).
    Bounded: the oldest entries go first when this worker does not own the
    touchpoints partition, or when normalise works through a backlog faster
    than reconstruct folds it (the default holds four folds' worth).
    """

    def __init__(self, limit: int = 400) -> None:
        self.limit = limit
        self._messages: OrderedDict[bytes, tuple[list[ClassifiedTouchpoint], list[bytes]]] = OrderedDict()

    def encode(self, steps: Sequence[ClassifiedTouchpoint]) -> Iterator[tuple[bytes, bytes]]:
        """Touchpoint messages, CHUNK at a time, remembering each message's touchpoints and encodings."""
        for start in range(0, len(steps), CHUNK):
            chunk = list(steps[start : start + CHUNK])
            raws = [step.touchpoint.json() for step in chunk]
            value = join_touchpoints(raws)
            self._messages[value] = (chunk, raws)
            while len(self._messages) > self.limit:
                self._messages.popitem(last=False)
            yield chunk[0].touchpoint.event_id.encode(), value

    def take(self, value: bytes | None) -> tuple[list[ClassifiedTouchpoint], list[bytes]] | None:
        """The classified touchpoints and encodings of a message this process sent, or None."""
        return self._messages.pop(value, None) if value else None

    def __len__(self) -> int:
        return len(self._messages)


def join_touchpoints(raw_touchpoints: Iterable[bytes]) -> bytes:
    """A JSON array of already encoded touchpoints."""
    return b"[" + b",".join(raw_touchpoints) + b"]"


def touchpoint_elements(value: bytes | None) -> list[tuple[Any, bytes]]:
    """The touchpoints in a touchpoints message (an array, or one object): each element decoded
    beside its encoding, decoded once.

    Raises ValueError with the reason for a message that is neither; each
    element is still read on its own (`classified_from_object`), so one bad
    element does not take its neighbours with it.
    """
    try:
        parsed = orjson.loads(value or b"")
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"not JSON: {exc}") from None
    if isinstance(parsed, dict):
        return [(parsed, value or b"")]
    if isinstance(parsed, list):
        return [(element, orjson.dumps(element)) for element in parsed]
    raise ValueError(f"a JSON {type(parsed).__name__}, not a touchpoint or an array of them")


_WATERMARK = JOURNEY_COLUMNS.index("watermark")


class PublishedJourneys:
    """What the state topic last said about each journey, so that only what changed goes out again.

    A batch refolds each affected customer's whole history; sending all of it
    made the state topic and the sink's writes grow with the customer's history
    instead of with what happened. Per journey this keeps a digest of its row
    without the watermark (when processing had got there, not what happened:
    every fold moves it), its persona, and its touchpoints as placed when
    published (event id, position, phase, sentiment: with the journey's
    customer, id and persona, what a touchpoint row holds besides the
    touchpoint itself, which never changes once admitted). Then a journey goes
    out as:

    - kept (its id only) when its row and placements are unchanged: the sink
      leaves its stored rows as they are;
    - in part (its row and only the touchpoints that are new or placed at
      another position or with another sentiment) when every published
      touchpoint is still in it with the same phase and the persona is the
      same: its drop-off points, which are (phase, channel, action, detail) of
      its touchpoints, then include the stored ones, and the sink carries those
      over (`sinks.clickhouse.write_customer_journeys`). The usual case: a
      journey grows at its end (only the new touchpoints go), or an event from
      another channel's partition lands inside it (the touchpoints after it
      move one position on). Sending all of a journey on every batch made a
      long journey cost the square of its length;
    - whole otherwise (a touchpoint left it or changed phase, a persona
      learned), and the first time.

    Holds each published journey's placements (tuples the fold made anyway).
    Cleared when the stage is rebuilt: a snapshot sends everything. `sent`
    counts the journeys by how they went out (`new`: whole, the first time;
    `whole`: whole again; `partial`; `kept`) and the touchpoint rows sent
    (`touchpoint_rows`), for the worker's metrics.
    """

    def __init__(self) -> None:
        self._customers: dict[str, dict[str, tuple[bytes, str | None, tuple[PlacedTouchpoint, ...]]]] = {}
        self.sent: Counter[str] = Counter()

    def clear(self) -> None:
        self._customers.clear()

    def changes(
        self, customer_id: str, journeys: list[Journey], values: list[tuple]
    ) -> tuple[list[tuple[int, list[int] | None]], list[str]] | None:
        """(the journeys that changed since last published, as (position, positions of the touchpoints
        to send, or None for all of them), ids of those that did not), remembered; None when the
        customer stands exactly as published (none changed or went away).

        `values` are the journeys' `journey_values`, made once for this and the message.
        """
        before = self._customers.get(customer_id, {})
        now: dict[str, tuple[bytes, str | None, tuple[PlacedTouchpoint, ...]]] = {}
        changed: list[tuple[int, list[int] | None]] = []
        kept: list[str] = []
        new = 0
        for position, (journey, row) in enumerate(zip(journeys, values, strict=True)):
            published = now[journey.journey_id] = (row_digest(row), journey.persona, journey.touchpoints)
            earlier = before.get(journey.journey_id)
            if earlier is None:
                changed.append((position, None))
                new += 1
            elif earlier == published:
                kept.append(journey.journey_id)
            else:
                changed.append(
                    (position, placed_anew(earlier[2], journey) if earlier[1] == journey.persona else None)
                )
        if now:
            self._customers[customer_id] = now
        else:
            self._customers.pop(customer_id, None)
        if not changed and before.keys() == now.keys() and now:
            return None
        partial = sum(1 for _, send in changed if send is not None)
        self.sent.update(new=new, whole=len(changed) - partial - new, partial=partial, kept=len(kept))
        return changed, kept

    def take_sent(self) -> Counter[str]:
        """What `sent` counted since the last call, and start counting again."""
        sent, self.sent = self.sent, Counter()
        return sent

    def __len__(self) -> int:
        return sum(len(journeys) for journeys in self._customers.values())


def placed_anew(published: tuple[PlacedTouchpoint, ...], journey: Journey) -> list[int] | None:
    """Positions of the journey's touchpoints whose rows differ from the published ones (new, or at
    another position or sentiment); None when a published touchpoint left the journey or changed
    phase, so that the journey's drop-off points changed other than by addition."""
    placed = journey.touchpoints
    if placed[: len(published)] == published:  # grown at its end: the usual case, no lookup
        return list(range(len(published), len(placed)))
    before = {placement.event_id: placement for placement in published}
    send = []
    for index, placement in enumerate(placed):
        earlier = before.pop(placement.event_id, None)
        if earlier is None or earlier != placement:
            if earlier is not None and earlier.phase != placement.phase:
                return None
            send.append(index)
    return None if before else send


def row_digest(row: tuple) -> bytes:
    """A digest of a journey's `journey_values` row but for its watermark."""
    values = list(row)
    del values[_WATERMARK]
    return hashlib.blake2b(orjson.dumps(values), digest_size=16).digest()


def state_messages(
    result: BatchResult,
    reconstruction: Reconstruction,
    raw_events: dict[str, bytes],
    now: datetime,
    published: PublishedJourneys | None = None,
    steps: Mapping[str, ClassifiedTouchpoint] | None = None,
) -> Iterator[tuple[bytes, bytes]]:
    """(key, value) messages for the state topic describing one batch's changes.

    With `published`, a changed customer's journeys that did not change go out
    as kept ids only, journeys sent in part with only their touchpoints that
    are new or placed anew, and a customer none of whose journeys changed not at all.
    `steps` holds the changed customers' touchpoints by event id when the caller
    has them (`LiveReconstruction.steps`); else they are made from the aggregate.
    """
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
        values = [journey_values(j) for j in journeys]
        kept: list[str] = []
        partial: list[str] = []
        sent: list[tuple[Journey, list[int] | None]] = [(journey, None) for journey in journeys]
        if published is not None:
            changes = published.changes(customer_id, journeys, values)
            if changes is None:
                continue  # every journey as published: nothing to write
            changed, kept = changes
            sent = [(journeys[i], only) for i, only in changed]
            values = [values[i] for i, _ in changed]
            partial = [journey.journey_id for journey, only in sent if only is not None]
        touchpoints = [
            row
            for journey, only in sent
            for row in touchpoint_values(reconstruction, journey, now, steps=steps, only=only)
        ]
        if published is not None:
            published.sent["touchpoint_rows"] += len(touchpoints)
        entry = orjson.dumps([customer_id, values, touchpoints, kept, partial])
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
    result: BatchResult,
    reconstruction: Reconstruction,
    raw_events: dict[str, bytes],
    now: datetime,
    published: PublishedJourneys | None = None,
    steps: Mapping[str, ClassifiedTouchpoint] | None = None,
) -> Iterator[tuple[bytes, bytes]]:
    """`state_messages` of a complete state (a rebuild), framed so the sink can drop what it lacks.

    A stage rebuilt after a failover cannot know which customers its
    predecessor published that no longer exist (a link it admitted but did not
    live to publish merged them away): only a complete snapshot tells. It sends
    every journey: `published` starts again from it.
    """
    if published is not None:
        published.clear()
    yield b"snapshot", SNAPSHOT_BEGIN
    yield from state_messages(result, reconstruction, raw_events, now, published, steps)
    yield b"snapshot", SNAPSHOT_END
