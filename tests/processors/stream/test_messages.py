"""Touchpoint messages: batches of canonical touchpoints, split back element by element."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import orjson
import pytest
from pydantic import ValidationError

from journeys.touchpoint import Touchpoint
from processors.stream.messages import CHUNK, decode_touchpoint, encode_touchpoints, split_touchpoints

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
    back = [decode_touchpoint(raw) for _, value in messages for raw in split_touchpoints(value)]
    assert back == touchpoints


def test_one_object_is_one_touchpoint_and_anything_else_is_refused() -> None:
    one = visit(1).model_dump_json().encode()
    assert [decode_touchpoint(raw) for raw in split_touchpoints(one)] == [visit(1)]
    for junk, reason in ((b"[not json", "not JSON"), (b'"text"', "a JSON str"), (None, "not JSON")):
        with pytest.raises(ValueError, match=reason):
            split_touchpoints(junk)


def test_a_bad_element_fails_alone() -> None:
    value = orjson.dumps([orjson.loads(visit(1).model_dump_json()), {"event_id": "x"}])
    first, second = split_touchpoints(value)
    assert decode_touchpoint(first) == visit(1)
    with pytest.raises(ValidationError):
        decode_touchpoint(second)
