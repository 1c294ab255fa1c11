"""Touchpoint messages (batches of canonical touchpoints, split back element by element) and what a
journey's state message carries."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from hostile import JSON_VALUES
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from journeys.fold import ClassifiedTouchpoint, JourneyPolicy, PlacedTouchpoint
from journeys.identity import IdentityPolicy
from journeys.live import LiveReconstruction
from journeys.phases import Phase, PhaseRules
from journeys.reconstruct import Reconstruction
from journeys.touchpoint import Channel, CompactTouchpoint, Touchpoint, compact_touchpoint
from processors.config import load_rules
from processors.stream.messages import (
    CHUNK,
    PublishedJourneys,
    classified_from_object,
    compact_from_object,
    decode_touchpoint,
    encode_touchpoint,
    encode_touchpoints,
    placed_anew,
    state_messages,
    touchpoint_elements,
    touchpoint_fields,
)

T0 = datetime(2026, 9, 1, tzinfo=UTC)


def visit(n: int) -> Touchpoint:
    return Touchpoint(
        event_id=f"e{n}",
        occurred_at=T0 + timedelta(seconds=n),
        channel="web",
        source="segment",
        action="Page Viewed",
        identifiers=[{"type": "anonymous_id", "value": f"a{n % 7}"}],
        properties={"path": "/"},
    )


def test_touchpoints_travel_in_chunks_and_come_back_equal() -> None:
    touchpoints = [visit(n) for n in range(CHUNK + 3)]
    messages = list(encode_touchpoints(touchpoints))
    assert [key for key, _ in messages] == [b"e0", f"e{CHUNK}".encode()]
    back = [decode_touchpoint(raw) for _, value in messages for _, raw in touchpoint_elements(value)]
    assert back == touchpoints


def test_one_object_is_one_touchpoint_and_anything_else_is_refused() -> None:
    one = visit(1).model_dump_json().encode()
    assert [decode_touchpoint(raw) for _, raw in touchpoint_elements(one)] == [visit(1)]
    for junk, reason in ((b"[not json", "not JSON"), (b'"text"', "a JSON str"), (None, "not JSON")):
        with pytest.raises(ValueError, match=reason):
            touchpoint_elements(junk)


def test_a_bad_element_fails_alone() -> None:
    value = orjson.dumps([orjson.loads(visit(1).model_dump_json()), {"event_id": "x"}])
    (_, first), (_, second) = touchpoint_elements(value)
    assert decode_touchpoint(first) == visit(1)
    with pytest.raises(ValidationError):
        decode_touchpoint(second)


# -- the short way in: decoded JSON objects straight to the compact form ---------------------

CANONICAL_TIMES = st.integers(0, 4 * 10**12).map(lambda ms: datetime.fromtimestamp(ms / 1000, UTC))
TOUCHPOINTS = st.builds(
    Touchpoint,
    event_id=st.text(min_size=1, max_size=40),
    occurred_at=CANONICAL_TIMES,
    received_at=st.none() | CANONICAL_TIMES,
    channel=st.sampled_from(Channel),
    source=st.sampled_from(["segment", "sendgrid", "twilio", "callcsv"]),
    action=st.sampled_from(["Page Viewed", "Order Completed", "bounce", "call.no-answer", "x" * 256]),
    identifiers=st.lists(
        st.fixed_dictionaries(
            {
                "type": st.sampled_from(["user_id", "email", "anonymous_id", "crm_id"]),
                "value": st.from_regex(r"[a-z0-9@.]{1,20}", fullmatch=True),
            }
        ),
        min_size=1,
        max_size=3,
    ),
    properties=st.dictionaries(st.text(max_size=8), JSON_VALUES, max_size=4),
    persona=st.none() | st.text(max_size=20),
    sentiment=st.none() | st.floats(-1, 1),
    value=st.none() | st.floats(-1e9, 1e9, allow_nan=False),
)
# What another producer could put on the topic: each one a value the model coerces, refuses or reads.
ODD_VALUES: dict[str, st.SearchStrategy] = {
    "event_id": st.sampled_from(["", "e" * 257, 7, None]),
    "occurred_at": st.sampled_from(
        [
            "2026-09-01T10:00:00Z",
            "2026-09-01T10:00:00.123456Z",
            "2026-09-01T10:00:00.1234Z",
            "2026-09-01T10:00:00+02:00",
            "2026-09-01T10:00:00",
            "2026-09-01T24:00:00Z",
            "2026-09-01",
            "2026-09-01 10:00:00Z",
            1_788_000_000,
            None,
        ]
    ),
    "received_at": st.sampled_from(["2026-09-01T10:00:00.500Z", "yesterday", 0]),
    "channel": st.sampled_from(["WEB", "fax", 1, None]),
    "source": st.sampled_from(["", "s" * 65, None]),
    "identifiers": st.sampled_from(
        [
            [],
            [{"type": "user_id", "value": " u "}],
            [{"type": "User", "value": "u"}],
            [{"type": "user_id", "value": "u", "extra": 1}],
            [{"type": "user_id"}],
            [["user_id", "u"]],
            {"type": "user_id", "value": "u"},
            "u",
        ]
    ),
    "properties": st.sampled_from([None, [], "x", {"nested": {"a": [1, 2.5]}}]),
    "persona": st.sampled_from([1, "p" * 129]),
    "sentiment": st.sampled_from([1, 1.5, "0.5", True]),
    "value": st.sampled_from([3, "12.5", True]),
    "currency": st.sampled_from(["EUR", "eur"]),
    "unknown_field": st.just(1),
}


def _through_the_model(obj: object, rules: PhaseRules) -> tuple[str, object]:
    try:
        return "ok", ClassifiedTouchpoint.of(decode_touchpoint(orjson.dumps(obj)), rules)
    except ValidationError as exc:
        return "invalid", _reasons(exc)


def _reasons(exc: ValidationError) -> list[tuple[object, ...]]:
    return [(error["type"], error["loc"], error["msg"]) for error in exc.errors()]


@settings(max_examples=400)
@given(touchpoint=TOUCHPOINTS, data=st.data())
def test_the_short_way_in_gives_what_the_model_gives_or_its_error(
    touchpoint: Touchpoint, data: st.DataObject
) -> None:
    rules = PhaseRules()
    obj = orjson.loads(touchpoint.model_dump_json())
    odd = data.draw(st.sets(st.sampled_from(sorted(ODD_VALUES)), max_size=3), label="odd fields")
    for name in sorted(odd):
        obj[name] = data.draw(ODD_VALUES[name], label=name)
    for name in data.draw(st.sets(st.sampled_from(sorted(obj)), max_size=2), label="dropped"):
        del obj[name]
    expected = _through_the_model(obj, rules)
    try:
        got: tuple[str, object] = ("ok", classified_from_object(obj, rules))
        compact = compact_from_object(obj)
    except ValidationError as exc:
        got = ("invalid", _reasons(exc))
    else:
        assert compact == got[1].touchpoint  # type: ignore[union-attr]
    assert got == expected


@given(touchpoint=TOUCHPOINTS)
def test_what_a_worker_writes_takes_the_short_way_and_reads_back_equal(touchpoint: Touchpoint) -> None:
    compact = CompactTouchpoint.of(touchpoint)
    for raw in (touchpoint.model_dump_json().encode(), compact.json()):
        obj = orjson.loads(raw)
        fields = touchpoint_fields(obj)
        assert fields is not None and compact_touchpoint(fields) == compact
        assert compact_from_object(obj) == compact


def test_touchpoint_elements_decode_each_element_once_beside_its_encoding() -> None:
    value = orjson.dumps([orjson.loads(visit(1).model_dump_json()), {"event_id": "x"}])
    (first, first_raw), (second, second_raw) = touchpoint_elements(value)
    assert compact_from_object(first) == CompactTouchpoint.of(visit(1))
    assert decode_touchpoint(first_raw) == visit(1)
    assert second == {"event_id": "x"} and orjson.loads(second_raw) == second
    one = visit(2).model_dump_json().encode()
    assert touchpoint_elements(one) == [(orjson.loads(one), one)]


def test_a_journey_is_published_new_then_in_part_and_whole_again_when_every_row_changed() -> None:
    """One visitor's journey: first sent whole; a later page grows it (only that page is sent); a late
    page lands inside it (it and the pages it moved on are sent); an unchanged customer is not sent; a
    persona learned changes every touchpoint row, so whole again."""

    def page(event_id: str, minutes: int, persona: str | None = None) -> Touchpoint:
        return Touchpoint(
            event_id=event_id,
            occurred_at=T0 + timedelta(minutes=minutes),
            channel="web",
            source="segment",
            action="Page Viewed",
            identifiers=[{"type": "anonymous_id", "value": "visitor"}],
            properties={"path": f"/{event_id}"},
            persona=persona,
        )

    batches = [
        [page("a", 0), page("c", 20)],
        [page("d", 30)],
        [page("b", 10)],
        [],
        [page("e", 40, "barista")],
    ]
    raw = {tp.event_id: encode_touchpoint(tp) for batch in batches for tp in batch}
    live = LiveReconstruction(Reconstruction(load_rules(), IdentityPolicy(), JourneyPolicy()))
    published = PublishedJourneys()
    sent = []
    for batch in batches:
        messages = state_messages(live.admit_batch(batch), live.reconstruction, raw, T0, published)
        entries = [
            e for _, v in messages if (m := orjson.loads(v))["kind"] == "customers" for e in m["customers"]
        ]
        sent.append(([row[0] for _, _, rows, _, _ in entries for row in rows], published.take_sent()))
    assert sent == [
        (["a", "c"], {"new": 1, "whole": 0, "partial": 0, "kept": 0, "touchpoint_rows": 2}),
        (["d"], {"new": 0, "whole": 0, "partial": 1, "kept": 0, "touchpoint_rows": 1}),
        (["b", "c", "d"], {"new": 0, "whole": 0, "partial": 1, "kept": 0, "touchpoint_rows": 3}),
        ([], {}),
        (["a", "b", "c", "d", "e"], {"new": 0, "whole": 1, "partial": 0, "kept": 0, "touchpoint_rows": 5}),
    ]


def test_a_journey_goes_in_part_only_while_its_published_touchpoints_stay_with_their_phase() -> None:
    """`placed_anew`: the positions to send, or None when the stored drop-off points would be wrong."""

    def journey(*placed: tuple[str, Phase, float | None]) -> Any:
        touchpoints = tuple(PlacedTouchpoint(e, seq, phase, s) for seq, (e, phase, s) in enumerate(placed))
        return type("Journey", (), {"touchpoints": touchpoints})()

    o, c = Phase.ORIENTATION, Phase.CONSIDERATION
    published = journey(("a", o, None), ("b", c, None)).touchpoints
    assert placed_anew(published, journey(("a", o, None), ("b", c, None), ("x", c, 0.5))) == [2]
    assert placed_anew(published, journey(("x", o, None), ("a", o, None), ("b", c, None))) == [0, 1, 2]
    assert placed_anew(published, journey(("a", o, None), ("b", c, -0.5))) == [1], "another sentiment"
    assert placed_anew(published, journey(("a", o, None), ("b", o, None))) is None, "b changed phase"
    assert placed_anew(published, journey(("a", o, None), ("x", c, None))) is None, "b left"
