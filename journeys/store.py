"""Columnar storage of every admitted touchpoint: the aggregate's memory per event.

The reconstruction keeps every touchpoint it has admitted (a fold needs all
of a customer's events, and any event can be refolded later). As one
`ClassifiedTouchpoint` object per event that cost about 920 bytes an event
(two named tuples, two datetimes, floats, a classification tuple, the
properties JSON): 10M events did not fit in 4 GB. Here each field is a
column instead:

- timestamps as whole microseconds since the epoch in `array('q')` (8 bytes
  each; exact both ways, no float on the way);
- sentiment and value, which most events lack (1.6 % and 10 % of the 1M
  short mix have one), only where given: the rows that have one
  (`array('i')`, ascending, found by bisection) and the values
  (`array('d')`): 12 bytes a value instead of 8 bytes a row;
- channel, source, action, persona, currency, the rule classification and
  whether the row has a sentiment and a value as one code (`array('I')`,
  4 bytes) into a table of the distinct combinations (a few hundred on real
  data: they are low-cardinality by nature). The two flags spare the rows
  without a sentiment or value (most) both bisections when read;
- the identifier keys as references to shared tuples: a device or person
  sends the same identifier set again and again, so identical sets are kept
  once (the identity graph holds the same key tuples);
- the properties JSON as a 4-byte number into the distinct texts, kept as
  UTF-8 in one `bytearray` (`Utf8Strings`): a page view sends the same
  properties again and again (a third of the 1M short mix's are distinct),
  and a `str` would cost 49 bytes of header beyond its characters;
- the event id as UTF-8 in one `bytearray` with a 4-byte end offset per row
  (`EventIds`, where a `str` in a list took about 57 bytes more), with a
  hash table of rows (`array('i')`) to find it. The identity graph reads the
  same table and the occurred_at column: it keys its linking events by row.

The sharing tables (identifier sets, properties texts) are bounded: past
their size they start again, which costs memory, never a result.

A `ClassifiedTouchpoint` equal to the one admitted is made again when it is
asked for (`step`): the fold reads one customer at a time, so only
that customer's touchpoints exist as objects at once. Pure: no I/O.
"""

from __future__ import annotations

from array import array
from bisect import bisect_left
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from journeys.fold import ClassifiedTouchpoint
from journeys.phases import Classification
from journeys.touchpoint import Channel, CompactTouchpoint

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_NO_TIME = -(1 << 63)  # received_at None (no real timestamp is this far back: datetime.min is -6.2e16 µs)
_MAX_SHARED = 1 << 18  # entries per sharing table; past this it starts again
_MAX_SHARED_TEXTS = 1 << 14  # properties texts shared (their str objects are kept for it)
_MAX_NARROW_END = (1 << 32) - 1  # the largest end offset an array('I') holds
_FIRST_SLOTS = 1 << 10  # slots of the event id table to begin with (a power of two)
_new_tuple = tuple.__new__
_timedelta = timedelta


# channel, source, action, persona, currency, classification, has a sentiment, has a value
Kind = tuple[Channel, str, str, "str | None", "str | None", Classification, bool, bool]


class Utf8Strings:
    """Strings by number (0, 1, … in the order appended), UTF-8 in one `bytearray`.

    A `str` costs 49 bytes of object header beyond its characters (and a slot wherever it is
    referenced); here a string costs its encoded length and a 4-byte end offset (8 once the data
    pass 4 GiB). Any `str` goes through (lone surrogates included); each read decodes anew.
    """

    __slots__ = ("_data", "_ends")

    def __init__(self) -> None:
        self._data = bytearray()
        self._ends = array("I")  # number -> end offset in _data (it starts where the one before ends)

    def __len__(self) -> int:
        return len(self._ends)

    def __getitem__(self, row: int) -> str:
        if row < 0:
            raise IndexError(row)
        ends = self._ends
        start = ends[row - 1] if row else 0
        return self._data[start : ends[row]].decode("utf-8", "surrogatepass")

    def __iter__(self) -> Iterator[str]:
        data, start = self._data, 0
        for end in self._ends:
            yield data[start:end].decode("utf-8", "surrogatepass")
            start = end

    def append(self, value: str) -> int:
        """Keep one string; returns its number."""
        ends = self._ends
        number = len(ends)
        self._data += value.encode("utf-8", "surrogatepass")
        end = len(self._data)
        if end > _MAX_NARROW_END and ends.typecode == "I":
            ends = self._ends = array("q", ends)  # past 4 GiB: 8-byte offsets from now on
        ends.append(end)
        return number


class EventIds(Utf8Strings):
    """Every admitted event id, one row each, in admission order (`Utf8Strings`), found by row.

    An event id is 70–110 bytes as a `str` in a list; here its encoded length and a 4-byte end
    offset, plus 6 to 12 bytes of the hash table that finds its row: an open-addressing table of
    rows (`array('i')`, linear probing, at most two thirds full), keyed by the `str` hash.
    """

    __slots__ = ("_mask", "_slots")

    def __init__(self) -> None:
        super().__init__()
        self._slots = array("i", [-1]) * _FIRST_SLOTS
        self._mask = _FIRST_SLOTS - 1

    def __contains__(self, event_id: object) -> bool:
        return isinstance(event_id, str) and self.row_of(event_id) is not None

    def row_of(self, event_id: str) -> int | None:
        """The row of a kept event id, or None."""
        slots, mask, ends, data = self._slots, self._mask, self._ends, self._data
        encoded = event_id.encode("utf-8", "surrogatepass")
        size = len(encoded)
        slot = hash(event_id) & mask
        while True:
            row = slots[slot]
            if row < 0:
                return None
            end = ends[row]
            start = ends[row - 1] if row else 0
            if end - start == size and data[start:end] == encoded:
                return row
            slot = (slot + 1) & mask

    def append(self, event_id: str) -> int:
        """Keep one event id (it must be new); returns its row."""
        row = super().append(event_id)
        slots, mask = self._slots, self._mask
        slot = hash(event_id) & mask
        while slots[slot] >= 0:
            slot = (slot + 1) & mask
        slots[slot] = row
        if 3 * (row + 1) > 2 * (mask + 1):
            self._grow()
        return row

    def _grow(self) -> None:
        """Double the table (it is kept at most two thirds full) and place every row again.

        Two thirds, not half: at 10M ids that is 2^24 slots (67 MB) instead of 2^25, for about
        3.5 probes instead of 2.5 to find that an id is new (linear probing)."""
        size = 2 * len(self._slots)
        slots = array("i", [-1]) * size
        mask = size - 1
        for row, event_id in enumerate(self):
            slot = hash(event_id) & mask
            while slots[slot] >= 0:
                slot = (slot + 1) & mask
            slots[slot] = row
        self._slots, self._mask = slots, mask


class TouchpointColumns:
    """Every admitted touchpoint, one row each, in admission order; rows are never removed."""

    __slots__ = (
        "_event_ids",
        "_identifier_sets",
        "_identifiers",
        "_kind_codes",
        "_kind_list",
        "_kinds",
        "_occurred",
        "_properties",
        "_properties_shared",
        "_property_texts",
        "_received",
        "_sentiment",
        "_sentiment_rows",
        "_value",
        "_value_rows",
    )

    def __init__(self) -> None:
        self._event_ids = EventIds()
        self._occurred = array("q")
        self._received = array("q")
        self._sentiment_rows = array("i")  # rows with a sentiment, ascending
        self._sentiment = array("d")  # ... and their sentiments
        self._value_rows = array("i")
        self._value = array("d")
        self._kinds = array("I")
        self._kind_codes: dict[tuple[Any, ...], int] = {}  # kind (and the sign of a zero sentiment) -> code
        self._kind_list: list[Kind] = []  # code -> kind
        self._identifiers: list[tuple[tuple[str, str], ...]] = []
        self._identifier_sets: dict[tuple[tuple[str, str], ...], tuple[tuple[str, str], ...]] = {}
        self._properties = array("I")  # row -> number of its properties JSON in _property_texts
        self._property_texts = Utf8Strings()
        self._properties_shared: dict[str, int] = {}  # JSON -> its number, bounded

    def __len__(self) -> int:
        return len(self._event_ids)

    def __contains__(self, event_id: object) -> bool:
        return event_id in self._event_ids

    def row_of(self, event_id: str) -> int | None:
        """The row of an admitted event id, or None."""
        return self._event_ids.row_of(event_id)

    @property
    def event_id_table(self) -> EventIds:
        """The event id column (read-only for others: the identity graph keys linking events by row)."""
        return self._event_ids

    def append(self, step: ClassifiedTouchpoint) -> int:
        """Keep one touchpoint (its event id must be new); returns its row.

        One is appended per admitted event: written for speed (one unpacking, no calls but the
        columns' own)."""
        touchpoint, classification = step
        (
            event_id,
            occurred_at,
            received_at,
            channel,
            source,
            action,
            identifiers,
            properties,
            persona,
            sentiment,
            value,
            currency,
        ) = touchpoint
        row = self._event_ids.append(event_id)
        self._occurred.append((occurred_at - _EPOCH) // _MICROSECOND)
        self._received.append(_NO_TIME if received_at is None else (received_at - _EPOCH) // _MICROSECOND)
        if sentiment is not None:
            self._sentiment_rows.append(row)
            self._sentiment.append(sentiment)
        if value is not None:
            self._value_rows.append(row)
            self._value.append(value)
        has_sentiment, has_value = sentiment is not None, value is not None
        kind = (channel, source, action, persona, currency, classification, has_sentiment, has_value)
        key = kind
        if classification[5] == 0:  # 0.0 and -0.0 are equal keys, but storage writes "-0": tell them apart
            key = (*kind, repr(classification[5]))
        code = self._kind_codes.get(key)
        if code is None:
            code = self._kind_codes[key] = len(self._kind_list)
            self._kind_list.append(kind)
        self._kinds.append(code)
        shared = self._identifier_sets.get(identifiers)
        self._identifiers.append(shared if shared is not None else _share(self._identifier_sets, identifiers))
        number = self._properties_shared.get(properties)
        if number is None:
            number = self._keep_properties(properties)
        self._properties.append(number)
        return row

    @property
    def occurred_column(self) -> array[int]:
        """When each row's event occurred, in microseconds since the epoch (read-only for others:
        the identity graph orders linking events by it)."""
        return self._occurred

    def _keep_properties(self, properties: str) -> int:
        """The number of a properties JSON not shared (now): kept, and shared from now on while the
        table has room (past its size it starts again: an equal text may then be kept twice)."""
        shared = self._properties_shared
        if len(shared) >= _MAX_SHARED_TEXTS:
            shared.clear()
        number = shared[properties] = self._property_texts.append(properties)
        return number

    def identifiers(self, row: int) -> tuple[tuple[str, str], ...]:
        """The identifier keys of one row."""
        return self._identifiers[row]

    def step(self, row: int) -> ClassifiedTouchpoint:
        """The row as the classified touchpoint that was admitted (equal in every field).

        Made once per event and fold: the named tuples are made with `tuple.__new__` directly
        (their own `__new__` is a Python function), the timestamps with positional arguments."""
        kind = self._kind_list[self._kinds[row]]
        channel, source, action, persona, currency, classification, has_sentiment, has_value = kind
        received = self._received[row]
        sentiment = self._sentiment[bisect_left(self._sentiment_rows, row)] if has_sentiment else None
        value = self._value[bisect_left(self._value_rows, row)] if has_value else None
        return _new_tuple(
            ClassifiedTouchpoint,
            (
                _new_tuple(
                    CompactTouchpoint,
                    (
                        self._event_ids[row],
                        _EPOCH + _timedelta(0, 0, self._occurred[row]),
                        None if received == _NO_TIME else _EPOCH + _timedelta(0, 0, received),
                        channel,
                        source,
                        action,
                        self._identifiers[row],
                        self._property_texts[self._properties[row]],
                        persona,
                        sentiment,
                        value,
                        currency,
                    ),
                ),
                classification,
            ),
        )

    def event_ids(self) -> Iterator[str]:
        """Every event id, in admission order."""
        return iter(self._event_ids)

    def identifier_column(self) -> list[tuple[tuple[str, str], ...]]:
        """The identifier keys of every row, by row (read-only: do not change it)."""
        return self._identifiers


def _share(table: dict[Any, Any], value: Any) -> Any:
    """An equal value already kept, or `value` itself (kept from now on while the table has room)."""
    kept = table.get(value)
    if kept is None:
        if len(table) >= _MAX_SHARED:
            table.clear()
        table[value] = kept = value
    return kept
