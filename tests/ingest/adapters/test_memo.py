"""The adapters' identifier memo (`IngestContext.memo`) never changes an outcome; the ingest clock.

Records are drawn from a small pool of identifier values (placeholders, emails
in other spellings, valid and invalid phone numbers, numbers and booleans that
compare equal as keys, arrays) so the same values recur and the memo answers
most of them. Parsed with one context (memo hits) they must give exactly what
each record gives with a fresh context of its own (an empty memo).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingest.adapters.base import memo_key
from ingest.context import IngestContext, Memo, to_millisecond, utc_now
from ingest.pipeline import parse_records
from ingest.records import RawRecord

VALUES: list[Any] = [
    None,
    "",
    "  ",
    "anonymous",
    "undefined",
    "u-1",
    " u-1 ",
    "jan@x.nl",
    " Jan@X.nl ",
    "test@example.com",
    "not an email",
    "a@b",
    "+31612345678",
    "06 12345678",
    "+15550100",
    "12345",
    1,
    1.0,
    True,
    False,
    0,
    ["jan@x.nl"],
    {"id": "x"},
    "x" * 300,
    "jan@x.nl" + "y" * 300,
]
value = st.sampled_from(VALUES)
maybe = st.one_of(st.just(None), value)
SETTINGS = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def _without_none(obj: dict[str, Any]) -> dict[str, Any]:
    return {key: val for key, val in obj.items() if val is not None}


segment_call = st.builds(
    lambda kind, user, anon, previous, traits, ctraits, device, external: _without_none(
        {
            "type": kind,
            "event": "Order Completed",
            "messageId": "m-1",
            "timestamp": "2024-03-05T10:00:00Z",
            "userId": user,
            "anonymousId": anon,
            "previousId": previous,
            "traits": traits,
            "context": _without_none({"traits": ctraits, "device": device, "externalIds": external}),
        }
    ),
    st.sampled_from(["track", "identify", "alias", "page"]),
    maybe,
    maybe,
    maybe,
    st.one_of(st.none(), st.just({}), st.fixed_dictionaries({}, optional={"email": value, "phone": value})),
    st.one_of(st.none(), st.just({}), st.fixed_dictionaries({}, optional={"email": value, "phone": value})),
    st.one_of(st.none(), st.just({}), st.fixed_dictionaries({}, optional={"id": value})),
    st.one_of(
        st.none(), st.just([{"type": "crmContactId", "id": "c-1"}]), st.lists(st.builds(dict, id=value))
    ),
)
sendgrid_event = st.builds(
    lambda email: _without_none(
        {"event": "open", "sg_event_id": "e-1", "timestamp": 1709632800, "email": email}
    ),
    maybe,
)
twilio_callback = st.builds(
    lambda direction, number, alias: _without_none(
        {
            "CallSid": "CA1",
            "CallStatus": "completed",
            "Direction": direction,
            "Timestamp": "Tue, 05 Mar 2024 10:17:00 +0000",
            "From": number,
            "To": number,
            "Caller": alias,
        }
    ),
    st.sampled_from(["inbound", "outbound-api"]),
    maybe,
    maybe,
)
call_row = st.builds(
    lambda customer, email, number: _without_none(
        {
            "call_id": "c-1",
            "started_at": "2024-03-05T10:00:00Z",
            "outcome": "answered",
            "customer_id": customer,
            "email": email,
            "caller_number": number,
        }
    ),
    maybe,
    maybe,
    maybe,
)
social_record = st.builds(
    lambda platform, handle, user, email: _without_none(
        {
            "schema": "journeys.social/v1",
            "id": "s-1",
            "kind": "mention",
            "platform": platform,
            "occurred_at": "2024-03-05T10:00:00Z",
            "handle": handle,
            "user_id": user,
            "email": email,
        }
    ),
    st.sampled_from(["x", "instagram"]),
    st.one_of(st.none(), st.sampled_from(["@Jan", "jan", "@", "anonymous", "", 12345]), value),
    maybe,
    maybe,
)
records = st.lists(
    st.one_of(segment_call, sendgrid_event, twilio_callback, call_row, social_record), min_size=1, max_size=30
)


def _raw(objects: list[dict[str, Any]]) -> list[RawRecord]:
    return [RawRecord(orjson.dumps(obj), f"test:{index}") for index, obj in enumerate(objects)]


@SETTINGS
@given(objects=records)
def test_remembered_identifiers_equal_fresh_ones(
    objects: list[dict[str, Any]], make_ctx: Callable[..., IngestContext]
) -> None:
    raw = _raw(objects)
    shared = make_ctx(extra_identifier_types={"crm_contact_id"})
    remembered = list(parse_records(raw + raw, shared))
    fresh = [
        outcome
        for record in raw + raw
        for outcome in parse_records([record], make_ctx(extra_identifier_types={"crm_contact_id"}))
    ]
    assert remembered == fresh


def test_equal_keys_of_other_types_are_not_confused(parse_raw: Callable[..., list[Any]]) -> None:
    # True == 1 == 1.0 as dict keys; each gets its own answer.
    calls = [
        {"type": "page", "messageId": "m", "timestamp": "2024-03-05T10:00:00Z", "userId": v}
        for v in (1, True, 1.0)
    ]
    outcomes = parse_raw(b"[" + b",".join(orjson.dumps(call) for call in calls) + b"]")
    assert outcomes[0].identifiers[0].value == "1"
    assert (
        outcomes[1].reason
        == "no usable identifier: userId: must be a string, got boolean; anonymousId: missing"
    )
    assert (
        outcomes[2].reason
        == "no usable identifier: userId: must be a string, got number; anonymousId: missing"
    )


def test_memo_key_takes_strings_booleans_and_none_only() -> None:
    assert memo_key(("a", None, True)) == ("a", None, True)
    assert memo_key(("a", 1)) is None
    assert memo_key((1.0,)) is None
    assert memo_key((["a"],)) is None


def test_memo_is_bounded() -> None:
    memo = Memo(limit=4)
    for index in range(100):
        memo.put(index, index)
        assert len(memo) <= 4
    assert memo.get(99) == 99


def test_context_memo_stays_bounded_over_many_people(make_ctx: Callable[..., IngestContext]) -> None:
    ctx = make_ctx()
    ctx.memo.limit = 8
    events = [
        {"event": "open", "sg_event_id": f"e-{i}", "timestamp": 1709632800, "email": f"p{i}@x.nl"}
        for i in range(50)
    ]
    outcomes = list(parse_records(_raw(events), ctx))
    assert len(outcomes) == 50 and len(ctx.memo) <= 8


def test_every_context_has_its_own_memo(make_ctx: Callable[..., IngestContext]) -> None:
    ctx = make_ctx()
    ctx.memo.put("k", "v")
    other = dataclasses.replace(ctx, phone_region="BE")
    assert other.memo is not ctx.memo and other.memo.get("k") is None
    # The memo is no part of a context's identity.
    assert dataclasses.replace(ctx) == ctx


@settings(max_examples=300, deadline=None)
@given(moment=st.datetimes(timezones=st.just(UTC)))
def test_clock_truncation_equals_replace(moment: datetime) -> None:
    expected = moment.replace(microsecond=moment.microsecond // 1000 * 1000)
    got = to_millisecond(moment)
    assert got == expected and got.tzinfo is expected.tzinfo


def test_utc_now_is_utc_at_milliseconds() -> None:
    before = datetime.now(UTC)
    now = utc_now()
    assert now.tzinfo is UTC and now.microsecond % 1000 == 0
    assert before - timedelta(milliseconds=1) < now <= datetime.now(UTC)
