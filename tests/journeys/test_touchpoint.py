"""The compact form the aggregate keeps says the same as the validated touchpoint."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import orjson
from hypothesis import given
from hypothesis import strategies as st

from journeys.touchpoint import CompactTouchpoint, Touchpoint

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
