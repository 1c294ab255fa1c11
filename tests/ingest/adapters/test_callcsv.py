"""The contact-centre call export (CSV, and the same columns as JSON lines) to phone touchpoints."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
import pytest

from ingest.records import DeadLetter
from journeys.touchpoint import Channel, Touchpoint


def test_calls_csv(parse_file, digest, now) -> None:
    answered, abandoned, voicemail, callback, belgian = parse_file("callcsv/calls.csv")
    for tp in (answered, abandoned, voicemail, callback, belgian):
        assert isinstance(tp, Touchpoint)
        assert (tp.channel, tp.source, tp.received_at) == (Channel.PHONE, "contact_centre", now)
    assert [tp.action for tp in (answered, abandoned, voicemail, callback, belgian)] == [
        "call.answered",
        "call.abandoned",
        "call.voicemail",
        "call.callback",  # "Callback" is case-folded
        "call.answered",
    ]
    assert answered.event_id == "CC-2024-0001"
    assert answered.occurred_at == datetime(2024, 3, 5, 8, 12, tzinfo=UTC)
    assert answered.identifier_keys() == (("user_id", "97980cfea0067"), ("phone", digest("+31612345678")))
    assert answered.properties == {
        "direction": "inbound",
        "duration_seconds": 450,
        "queue": "billing",
        "wait_seconds": 35,
        "ivr_path": "main>billing>agent",
        "csat": 4,
    }
    assert answered.sentiment == 0.5  # CSAT 4 on the 1..5 scale
    assert abandoned.identifier_keys() == (("phone", digest("+31207654321")),)
    assert abandoned.sentiment is None
    assert voicemail.identifier_keys() == (
        ("email", digest("piet.de.vries@initech.nl")),
        ("phone", digest("+31687654321")),
    )
    assert voicemail.sentiment == -0.4
    # withheld number ("anonymous") is dropped, the customer id carries the call
    assert callback.identifier_keys() == (("user_id", "C-881"),)
    assert callback.properties == {
        "direction": "inbound",
        "queue": "support",
        "wait_seconds": 61.5,
        "ivr_path": "main>support>callback",
    }
    assert belgian.identifier_keys() == (("phone", digest("+32470123456")),)
    assert belgian.properties["queue"] == "billing, NL"
    assert (belgian.sentiment, belgian.properties["csat"]) == (0.9, 5)  # explicit sentiment wins
    for tp in (answered, abandoned, voicemail):
        dump = tp.model_dump_json()
        assert "12345678" not in dump and "piet" not in dump


def test_bad_rows(parse_file, digest) -> None:
    letters = parse_file("callcsv/calls_bad.csv")
    assert all(isinstance(letter, DeadLetter) for letter in letters)
    assert [(letter.origin, letter.reason) for letter in letters] == [
        ("calls_bad.csv:row 2", "outcome: 'transferred' is not answered, abandoned, voicemail or callback"),
        ("calls_bad.csv:row 3", "csat: must be a whole number from 1 to 5, got '7'"),
        ("calls_bad.csv:row 4", "ended_at: before started_at"),
        ("calls_bad.csv:row 5", "started_at: timestamp must carry a time zone"),
        ("calls_bad.csv:row 6", "wait_seconds: must be a non-negative number, got '-3'"),
        (
            "calls_bad.csv:row 7",
            "no usable identifier: caller_number: placeholder value; customer_id, email: missing",
        ),
        ("calls_bad.csv:row 8", "sentiment: must be a number from -1 to 1, got '1.5'"),
        ("calls_bad.csv:row 9", "CSV row has 4 fields, the header has 12"),
        ("calls_bad.csv:row 10", "call_id: missing"),
    ]
    assert {letter.format for letter in letters} == {"callcsv"}
    # a short row keeps its shape for inspection, the caller's number replaced by its keyed hash
    phone = digest("+31612345678")
    assert letters[7].raw == f"CC-BAD-08,2024-03-05T09:12:00+01:00,<phone:{phone}>,billing".encode()


def test_json_lines_of_the_same_columns(parse_raw, digest) -> None:
    row = {
        "call_id": 77,
        "started_at": "2024-03-05T09:12:00Z",
        "caller_number": "+31612345678",
        "outcome": "ABANDONED",
        "wait_seconds": 12.25,
        "csat": 1,
    }
    (tp,) = parse_raw(orjson.dumps(row))
    assert (tp.event_id, tp.action, tp.sentiment) == ("77", "call.abandoned", -1.0)
    assert tp.properties == {"direction": "inbound", "wait_seconds": 12.25, "csat": 1}


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"outcome": None}, "outcome: missing"),
        ({"started_at": ""}, "started_at: missing"),
        ({"csat": "3.5"}, "csat: must be a whole number from 1 to 5, got '3.5'"),
        ({"sentiment": "nan"}, "sentiment: must be a number from -1 to 1, got 'nan'"),
        ({"wait_seconds": True}, "wait_seconds: must be a non-negative number, got a JSON boolean"),
        (
            {"caller_number": "+31 6 1234"},
            "no usable identifier: caller_number: not a valid phone number; customer_id, email: missing",
        ),
    ],
)
def test_rejections(parse_raw, change: dict, reason: str) -> None:
    row = {
        "call_id": "c-1",
        "started_at": "2024-03-05T09:12:00Z",
        "caller_number": "0612345678",
        "outcome": "answered",
    }
    (letter,) = parse_raw(orjson.dumps({**row, **change}), "callcsv")
    assert isinstance(letter, DeadLetter)
    assert letter.reason == reason
