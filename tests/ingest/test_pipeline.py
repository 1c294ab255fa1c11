"""The pipeline: detection, explicit formats, arrays, malformed input, one outcome per leaf."""

from __future__ import annotations

import hashlib
import hmac
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest
from hostile import bodies
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from ingest.context import IngestContext
from ingest.files import read_records
from ingest.pipeline import FORMATS, detect_format, parse_records
from ingest.records import DeadLetter, RawRecord
from journeys.touchpoint import Touchpoint

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
NOW = datetime(2024, 6, 1, tzinfo=UTC)
KEY = b"pipeline-test-key"
CTX = IngestContext.with_key(KEY, now=lambda: NOW)

SEGMENT = {
    "type": "track",
    "messageId": "m-1",
    "event": "X",
    "anonymousId": "a-1",
    "timestamp": "2024-03-01T00:00:00Z",
}
SENDGRID = {"email": "a.b@initech.nl", "timestamp": 1709632800, "event": "open", "sg_event_id": "e-1"}
# What a dead letter keeps of SENDGRID: the address replaced by its keyed hash.
SENDGRID_REDACTED = {
    **SENDGRID,
    "email": "<email:" + hmac.new(KEY, b"a.b@initech.nl", hashlib.sha256).hexdigest() + ">",
}
TWILIO = {
    "CallSid": "CA1",
    "CallStatus": "completed",
    "Direction": "inbound",
    "From": "+31612345678",
    "Timestamp": "Tue, 05 Mar 2024 10:17:00 +0000",
}
CALLCSV = {
    "call_id": "c-1",
    "started_at": "2024-03-05T09:12:00Z",
    "caller_number": "+31612345678",
    "outcome": "answered",
}
SOCIAL = {
    "schema": "journeys.social/v1",
    "id": "s-1",
    "kind": "mention",
    "platform": "x",
    "handle": "jan",
    "occurred_at": "2024-03-05T08:01:12Z",
}
META = {
    "object": "instagram",
    "entry": [
        {"id": "9", "time": 1709633400, "field": "comments", "value": {"id": "c1", "from": {"id": "42"}}}
    ],
}
SAMPLES = {
    "segment": SEGMENT,
    "sendgrid": SENDGRID,
    "twilio": TWILIO,
    "callcsv": CALLCSV,
    "social": SOCIAL,
    "meta": META,
}


def run(*raws: bytes | str, format: str | None = None, record_format: str | None = None) -> list:
    records = [
        RawRecord(raw.encode() if isinstance(raw, str) else raw, f"r{i}", record_format)
        for i, raw in enumerate(raws)
    ]
    return list(parse_records(records, CTX, format))


@pytest.mark.parametrize("name", FORMATS)
def test_detection_per_record(name: str) -> None:
    assert detect_format(SAMPLES[name]) == name
    (tp,) = run(orjson.dumps(SAMPLES[name]))
    assert isinstance(tp, Touchpoint), tp
    assert tp.source == ("contact_centre" if name == "callcsv" else name)


@pytest.mark.parametrize("name", FORMATS)
def test_explicit_format_accepts_its_own(name: str) -> None:
    (tp,) = run(orjson.dumps(SAMPLES[name]), format=name)
    assert isinstance(tp, Touchpoint)


def test_mixed_formats_in_one_stream_keep_order() -> None:
    outcomes = run(*(orjson.dumps(SAMPLES[name]) for name in FORMATS))
    assert [o.source for o in outcomes] == [
        "segment",
        "sendgrid",
        "twilio",
        "contact_centre",
        "social",
        "meta",
    ]


def test_explicit_format_mismatch_is_a_dead_letter() -> None:
    (letter,) = run(orjson.dumps(SENDGRID), format="segment")
    assert isinstance(letter, DeadLetter)
    assert (letter.reason, letter.format, letter.origin) == (
        "not a segment record (it looks like sendgrid)",
        "segment",
        "r0",
    )
    assert orjson.loads(letter.raw) == SENDGRID_REDACTED
    assert letter.received_at == NOW


def test_record_format_hint_is_used_and_format_argument_overrides_it() -> None:
    (letter,) = run(orjson.dumps(SEGMENT), record_format="callcsv")
    assert letter.reason == "not a callcsv record (it looks like segment)"
    (tp,) = run(orjson.dumps(SEGMENT), format="segment", record_format="callcsv")
    assert isinstance(tp, Touchpoint)


def test_explicit_format_names_the_missing_field_when_nobody_recognises_the_object() -> None:
    (letter,) = run(b'{"hello": "world"}', format="sendgrid")
    assert (letter.reason, letter.format) == ("event: missing", "sendgrid")
    (letter,) = run(b'{"hello": "world"}')
    assert (letter.reason, letter.format) == (
        "unrecognised format: a JSON object with keys 'hello'",
        "unknown",
    )
    (letter,) = run(b"{}")
    assert letter.reason == "unrecognised format: an empty JSON object"


def test_unknown_format_argument_raises_but_unknown_record_format_is_a_dead_letter() -> None:
    with pytest.raises(ValueError, match="unknown format 'mailchimp'"):
        parse_records([], CTX, "mailchimp")
    (letter,) = run(orjson.dumps(SEGMENT), record_format="mailchimp")
    assert letter.reason == "unknown format 'mailchimp'; known formats: " + ", ".join(FORMATS)


def test_arrays_split_into_elements_with_their_own_origin_and_raw() -> None:
    body = orjson.dumps([SENDGRID, {**SENDGRID, "sg_event_id": None}, 42, [SENDGRID]])
    tp, missing_id, number, nested = run(body)
    assert isinstance(tp, Touchpoint)
    assert (missing_id.origin, missing_id.reason) == ("r0#[1]", "sg_event_id: missing")
    assert orjson.loads(missing_id.raw) == {**SENDGRID_REDACTED, "sg_event_id": None}
    assert (number.origin, number.reason, number.raw) == (
        "r0#[2]",
        "unrecognised format: a JSON number",
        b"42",
    )
    assert nested.reason == "unrecognised format: a JSON array nested in an array"


def test_array_of_envelopes_composes_paths() -> None:
    bad_call = {**SEGMENT, "messageId": None}
    body = orjson.dumps([{"batch": [SEGMENT, bad_call]}])
    tp, letter = run(body)
    assert isinstance(tp, Touchpoint)
    assert letter.origin == "r0#[0].batch[1]"


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"[]", "empty JSON array: no records"),
        (b'{"batch": []}', "batch: holds no calls"),
        (b"", "malformed JSON: Input is a zero-length, empty document: line 1 column 1 (char 0)"),
        (b'{"type": "track",', "malformed JSON: unexpected end of data: line 1 column 18 (char 17)"),
        (
            b"\xff\xfe",
            "malformed JSON: str is not valid UTF-8: surrogates not allowed: line 1 column 1 (char 0)",
        ),
    ],
)
def test_empty_and_malformed_records(raw: bytes, reason: str) -> None:
    (letter,) = run(raw)
    assert isinstance(letter, DeadLetter)
    assert (letter.reason, letter.raw) == (reason, raw)


def test_non_object_with_explicit_format() -> None:
    (letter,) = run(b'"processed"', format="sendgrid")
    assert (letter.reason, letter.format) == ("not a sendgrid record: a JSON string", "sendgrid")


def test_reader_errors_become_dead_letters() -> None:
    record = RawRecord(b"a,b", "calls.csv:row 3", "callcsv", error="CSV row has 2 fields, the header has 12")
    (letter,) = parse_records([record], CTX)
    assert (letter.reason, letter.format, letter.origin, letter.raw) == (
        "CSV row has 2 fields, the header has 12",
        "callcsv",
        "calls.csv:row 3",
        b"a,b",
    )


def test_every_fixture_leaf_has_exactly_one_outcome() -> None:
    """read = touchpoints + dead letters, counted independently from the fixture files."""
    expected = {
        "segment/batch.json": 3,
        "sendgrid/events.json": 11,
        "sendgrid/rejects.json": 8,
        "sendgrid/posts.jsonl": 4,  # 2 + 1 (an empty array is one dead letter) + 1
        "twilio/inbound_call.txt": 3,
        "twilio/rejects.txt": 7,
        "callcsv/calls.csv": 5,
        "callcsv/calls_bad.csv": 9,
        "social/export.jsonl": 4,
        "meta/page_feed.json": 6,
        "meta/messenger.json": 4,
        "meta/instagram_comments.json": 4,
    }
    for name, leaves in expected.items():
        outcomes = list(parse_records(read_records(FIXTURES / name), CTX))
        touchpoints = sum(isinstance(o, Touchpoint) for o in outcomes)
        letters = sum(isinstance(o, DeadLetter) for o in outcomes)
        assert touchpoints + letters == len(outcomes) == leaves, name


def test_parse_is_lazy() -> None:
    def records():
        yield RawRecord(orjson.dumps(SEGMENT), "r0")
        raise AssertionError("read too far")

    outcomes = parse_records(records(), CTX)
    assert isinstance(next(outcomes), Touchpoint)


def _leaf_count(raw: bytes) -> int:
    try:
        parsed = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return 1
    return max(len(parsed), 1) if isinstance(parsed, list) else 1


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    raw=bodies(SAMPLES),
    format=st.sampled_from([None, *FORMATS]),
)
@example(raw=b'{"entry":[null]}', format="meta")  # found by this test: no `object`, an entry to split
def test_arbitrary_input_never_raises_and_always_yields_an_outcome(raw: bytes, format: str | None) -> None:
    outcomes = list(parse_records([RawRecord(raw, "fuzz")], CTX, format))
    assert len(outcomes) >= _leaf_count(raw)
    for outcome in outcomes:
        assert isinstance(outcome, Touchpoint | DeadLetter)
        if isinstance(outcome, DeadLetter):
            assert outcome.reason and "internal error" not in outcome.reason, outcome.reason


@settings(max_examples=150, deadline=None)
@given(
    body=st.dictionaries(st.sampled_from([*sorted(TWILIO), "Caller", "SequenceNumber"]), st.text(max_size=30))
)
def test_arbitrary_form_bodies_never_raise(body: dict[str, str]) -> None:
    from urllib.parse import urlencode

    raw = urlencode({"CallSid": "CA1", **body}).encode()
    (outcome,) = parse_records([RawRecord(raw, "fuzz")], CTX)
    assert isinstance(outcome, Touchpoint | DeadLetter)
    if isinstance(outcome, DeadLetter):
        assert "internal error" not in outcome.reason
