"""Twilio Voice status callbacks (form bodies and JSON objects) to phone touchpoints, and rejections."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
import pytest

from ingest.records import DeadLetter
from journeys.touchpoint import Channel, Touchpoint

INBOUND_SID = "CA5f0a8e3c1b2d4e6f8a9b0c1d2e3f4a5b"


def test_inbound_call_form_bodies(parse_file, digest, now) -> None:
    ringing, answered, completed = parse_file("twilio/inbound_call.txt")
    caller = (("phone", digest("+31612345678")),)  # From, not the business number in To
    for tp in (ringing, answered, completed):
        assert isinstance(tp, Touchpoint)
        assert (tp.channel, tp.source, tp.received_at) == (Channel.PHONE, "twilio", now)
        assert tp.identifier_keys() == caller
        assert "+3161" not in tp.model_dump_json()
    assert [tp.action for tp in (ringing, answered, completed)] == [
        "call.ringing",
        "call.in-progress",
        "call.completed",
    ]
    assert [tp.event_id for tp in (ringing, answered, completed)] == [
        f"{INBOUND_SID}:ringing:0",
        f"{INBOUND_SID}:in-progress:1",
        f"{INBOUND_SID}:completed:2",
    ]
    assert completed.occurred_at == datetime(2024, 3, 5, 10, 20, 9, tzinfo=UTC)
    assert ringing.properties == {
        "direction": "inbound",
        "call_sid": INBOUND_SID,
        "callback_source": "call-progress-events",
        "sequence_number": 0,
        "country": "NL",
    }
    assert completed.properties == {
        "direction": "inbound",
        "call_sid": INBOUND_SID,
        "callback_source": "call-progress-events",
        "sip_response_code": "200",
        "duration_seconds": 185,
        "duration_minutes": 4,
        "sequence_number": 2,
        "country": "NL",
    }


def test_outbound_json_objects(parse_file, digest) -> None:
    no_answer, busy, machine = parse_file("twilio/outbound_calls.json")
    assert no_answer.action == "call.no-answer"
    assert no_answer.identifier_keys() == (("phone", digest("+31687654321")),)  # To on outbound calls
    assert no_answer.properties["duration_seconds"] == 0
    assert busy.action == "call.busy"
    assert busy.identifier_keys() == (("phone", digest("+32470123456")),)
    assert busy.occurred_at == datetime(2024, 3, 6, 14, 10, tzinfo=UTC)  # +0100 converted to UTC
    assert busy.properties == {
        "direction": "outbound-dial",
        "call_sid": "CA1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d",
        "parent_call_sid": INBOUND_SID,
        "callback_source": "call-progress-events",
        "sip_response_code": "486",
        "sequence_number": 1,
        "country": "BE",
    }
    # no SequenceNumber: the event id is CallSid:CallStatus; "06 87654321" is read in NL
    assert machine.event_id == "CA2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e:completed"
    assert machine.identifier_keys() == no_answer.identifier_keys()
    assert machine.properties["answered_by"] == "machine_end_beep"


def test_rejections(parse_file) -> None:
    letters = parse_file("twilio/rejects.txt")
    assert all(isinstance(letter, DeadLetter) for letter in letters)
    assert [letter.reason for letter in letters] == [
        "CallStatus: unknown call status 'answered'",
        "Direction: 'trunking-originating' is not inbound, outbound-api or outbound-dial",
        "Timestamp: missing",
        "no usable identifier: From: placeholder value",
        "no usable identifier: From: not a phone number",
        "Timestamp: not an RFC 2822 date",
        "malformed JSON: unexpected character, expected a JSON value: line 1 column 1 (char 0) "
        "(nor a Twilio form-encoded callback: no CallSid field)",
    ]
    assert [letter.format for letter in letters] == ["twilio"] * 6 + ["unknown"]
    assert letters[0].origin == "rejects.txt:1"


BASE = "CallSid=CA1&CallStatus=completed&Direction=inbound&Timestamp=Tue,+05+Mar+2024+10:17:00+%2B0000"


def test_unescaped_plus_in_form_body_is_restored(parse_raw, digest) -> None:
    (tp,) = parse_raw(BASE + "&From=+31201234567")  # `+` decodes to a space
    assert tp.identifier_keys() == (("phone", digest("+31201234567")),)


def test_caller_alias_and_minus_zero_zone(parse_raw, digest) -> None:
    body = (
        "CallSid=CA2&CallStatus=busy&Direction=inbound&Caller=%2B31612345678"
        "&Timestamp=Tue,+05+Mar+2024+10:17:00+-0000"
    )
    (tp,) = parse_raw(body)
    assert tp.identifier_keys() == (("phone", digest("+31612345678")),)
    assert tp.occurred_at == datetime(2024, 3, 5, 10, 17, tzinfo=UTC)


def test_form_body_forced_as_twilio_and_json_object(parse_raw) -> None:
    (form,) = parse_raw(BASE + "&From=%2B31201234567", "twilio")
    fields = dict(item.split("=") for item in (BASE + "&From=%2B31201234567").split("&"))
    fields["Timestamp"] = "Tue, 05 Mar 2024 10:17:00 +0000"
    fields["From"] = "+31201234567"
    (obj,) = parse_raw(orjson.dumps(fields))
    assert form.model_dump() == obj.model_dump()


def test_form_body_with_another_format_forced_is_malformed_json(parse_raw) -> None:
    (letter,) = parse_raw(BASE + "&From=%2B31201234567", "sendgrid")
    assert letter.reason.startswith("malformed JSON: ")
    assert letter.format == "sendgrid"


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ("CallSid=CA3&CallStatus=&Direction=inbound&From=%2B31201234567", "CallStatus: missing"),
        ("CallSid=CA3&CallStatus=busy&From=%2B31201234567", "Direction: missing"),
        (BASE, "no usable identifier: From: missing"),
        (orjson.dumps({"CallSid": ["CA3"]}), "CallSid: must be a string, got array"),
    ],
)
def test_more_rejections(parse_raw, body: str | bytes, reason: str) -> None:
    (letter,) = parse_raw(body)
    assert isinstance(letter, DeadLetter)
    assert (letter.reason, letter.format) == (reason, "twilio")
