"""The compact form the aggregate keeps says the same as the validated touchpoint, and the
short way to it (without the model) gives what the model gives."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from journeys.touchpoint import Channel, CompactTouchpoint, Touchpoint, TouchpointFields, compact_touchpoint

PROPERTY_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=10),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3)
    ),
    max_leaves=10,
)


@given(
    properties=st.dictionaries(st.text(max_size=8), PROPERTY_VALUES, max_size=5),
    value=st.none() | st.floats(-1e9, 1e9, allow_nan=False),
    sentiment=st.none() | st.floats(-1, 1),
    millis=st.integers(0, 10**9),
)
def test_the_compact_json_is_the_model_s_json(
    properties: dict, value: float | None, sentiment: float | None, millis: int
) -> None:
    touchpoint = Touchpoint(
        event_id="e-1",
        occurred_at=datetime(2026, 9, 1, tzinfo=UTC) + timedelta(milliseconds=millis),
        channel="web",
        source="segment",
        action="Order Completed",
        identifiers=[{"type": "user_id", "value": "u-1"}, {"type": "anonymous_id", "value": "a-1"}],
        properties=properties,
        sentiment=sentiment,
        value=value,
        currency="EUR" if value is not None else None,
    )
    compact = CompactTouchpoint.of(touchpoint)
    assert orjson.loads(compact.json()) == orjson.loads(touchpoint.model_dump_json())
    assert compact.identifiers == touchpoint.identifier_keys()


def test_a_redelivery_is_the_same_event_and_a_changed_property_is_not() -> None:
    fields = {
        "event_id": "e-1",
        "occurred_at": datetime(2026, 9, 1, tzinfo=UTC),
        "channel": "email",
        "source": "sendgrid",
        "action": "open",
        "identifiers": [{"type": "email", "value": "hash"}],
        "properties": {"campaign": "spring", "category": ["nurture"]},
    }
    first = CompactTouchpoint.of(Touchpoint(**fields, received_at=datetime(2026, 9, 2, tzinfo=UTC)))
    again = CompactTouchpoint.of(Touchpoint(**fields, received_at=datetime(2026, 9, 3, tzinfo=UTC)))
    reordered = CompactTouchpoint.of(
        Touchpoint(**{**fields, "properties": {"category": ["nurture"], "campaign": "spring"}})
    )
    changed = CompactTouchpoint.of(Touchpoint(**{**fields, "properties": {"campaign": "autumn"}}))
    assert first.same_event(again) and first.same_event(reordered)
    assert not first.same_event(changed)


# ── the short way to the compact form ───────────────────────────────────────

ZONES = st.sampled_from([UTC, timezone(timedelta(hours=2)), timezone(timedelta(hours=-9, minutes=-30))])
TIMES = st.datetimes(timezones=ZONES) | st.datetimes() | st.text(max_size=25) | st.integers()
CANONICAL_TIMES = st.integers(0, 4 * 10**12).map(
    lambda ms: datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=ms)
)
TEXT = st.text(max_size=12) | st.text(min_size=250, max_size=600) | st.integers() | st.none()
IDENTIFIER_TYPES = st.sampled_from(["user_id", "email", "crm_id", "Bad-Type", "", "a" * 65, "x\n"])
IDENTIFIER_VALUES = st.text(max_size=10) | st.sampled_from([" padded ", "\x1fsep", "v" * 513, "\u3000"])
FLOATS = st.none() | st.floats() | st.integers(-3, 3) | st.booleans()
# Per field, values the model coerces, strips, refuses or accepts as they are.
ODD_FIELDS: dict[str, st.SearchStrategy] = {
    "event_id": TEXT,
    "occurred_at": TIMES,
    "received_at": st.none() | TIMES,
    "channel": st.sampled_from([*Channel, "web", "fax"]),
    "source": TEXT,
    "action": TEXT,
    "identifiers": st.lists(st.tuples(IDENTIFIER_TYPES, IDENTIFIER_VALUES), max_size=3),
    "properties": st.dictionaries(st.text(max_size=8), PROPERTY_VALUES, max_size=4)
    | st.dictionaries(st.integers(), st.none(), min_size=1, max_size=2),
    "persona": TEXT,
    "sentiment": FLOATS,
    "value": FLOATS,
    "currency": st.sampled_from([None, "EUR", "eur", "EURO", "EU\n"]),
}
CANONICAL_FIELDS = st.builds(
    TouchpointFields,
    event_id=st.text(min_size=1, max_size=256),
    occurred_at=CANONICAL_TIMES,
    received_at=st.none() | CANONICAL_TIMES,
    channel=st.sampled_from(Channel),
    source=st.sampled_from(["segment", "sendgrid", "twilio"]),
    action=st.text(min_size=1, max_size=256),
    identifiers=st.lists(
        st.tuples(
            st.sampled_from(["user_id", "email", "crm_id"]),
            st.from_regex(r"[a-z0-9@.]{1,40}", fullmatch=True),
        ),
        min_size=1,
        max_size=3,
    ),
    properties=st.dictionaries(st.text(max_size=8), PROPERTY_VALUES, max_size=4),
    persona=st.none() | st.text(max_size=128),
    sentiment=st.none() | st.floats(-1, 1),
    value=st.none() | st.floats(-1e9, 1e9, allow_nan=False),
    currency=st.none(),
)


def _through_the_model(fields: TouchpointFields) -> CompactTouchpoint | None:
    try:
        return CompactTouchpoint.of(Touchpoint.from_fields(fields))
    except (ValidationError, OverflowError):
        return None


@settings(max_examples=500)
@given(fields=CANONICAL_FIELDS, data=st.data())
def test_the_short_way_gives_the_model_s_compact_form_or_leaves_it_to_the_model(
    fields: TouchpointFields, data: st.DataObject
) -> None:
    odd = data.draw(st.sets(st.sampled_from(sorted(ODD_FIELDS)), max_size=3), label="odd fields")
    fields = fields._replace(**{name: data.draw(ODD_FIELDS[name], label=name) for name in sorted(odd)})
    compact = compact_touchpoint(fields)
    if compact is not None:
        assert compact == _through_the_model(fields)
        assert compact.json() == CompactTouchpoint.of(Touchpoint.from_fields(fields)).json()


@given(fields=CANONICAL_FIELDS)
def test_canonical_fields_take_the_short_way(fields: TouchpointFields) -> None:
    compact = compact_touchpoint(fields)
    assert compact is not None
    assert compact == _through_the_model(fields)


def test_the_short_way_leaves_what_the_model_would_change_or_refuse_to_the_model() -> None:
    good = TouchpointFields(
        "e-1", datetime(2026, 9, 1, tzinfo=UTC), None, Channel.WEB, "segment", "X", [("user_id", "u")], {}
    )
    assert compact_touchpoint(good) is not None
    for change in (
        {"event_id": ""},
        {"event_id": "e" * 257},
        {"occurred_at": datetime(2026, 9, 1)},  # naive: refused
        {"occurred_at": "2026-09-01T00:00:00Z"},  # a string: coerced
        {"channel": "web"},  # coerced to the enum
        {"identifiers": []},
        {"identifiers": [("user_id", " u ")]},  # stripped
        {"identifiers": [("User", "u")]},
        {"sentiment": 1},  # an int: coerced to float
        {"sentiment": 1.5},
        {"value": float("inf")},
        {"currency": "EUR"},  # without a value
        {"properties": {1: "x"}},
        {"persona": "p" * 129},
    ):
        assert compact_touchpoint(good._replace(**change)) is None, change
    # Other zones and sub-millisecond times are made canonical, as the model makes them.
    shifted = good._replace(
        occurred_at=datetime(2026, 9, 1, 2, 0, 0, 1500, tzinfo=timezone(timedelta(hours=2)))
    )
    assert compact_touchpoint(shifted) == _through_the_model(shifted)
