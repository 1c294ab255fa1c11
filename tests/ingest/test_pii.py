"""PII: normalisation, E.164, keyed hashing, key configuration, and nothing raw in a touchpoint."""

from __future__ import annotations

import hashlib
import hmac
import time
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import parse_qsl

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingest.context import IngestContext
from ingest.files import read_records
from ingest.pii import (
    MAX_PROPERTY_DEPTH,
    PII_KEY_ENV,
    PII_KEY_FILE_ENV,
    PII_PROPERTY_KEYS,
    PiiError,
    PiiHasher,
    PiiKeyError,
    load_pii_key,
    normalise_email,
    normalise_phone,
    redact_emails,
    redact_record,
    scrub_properties,
)
from ingest.pipeline import parse_records
from ingest.records import DeadLetter, RawRecord
from journeys.touchpoint import Touchpoint

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


@pytest.mark.parametrize(
    ("raw", "normalised"),
    [
        ("  Jan.Jansen@Initech.NL ", "jan.jansen@initech.nl"),
        ("jan+news@initech.nl", "jan+news@initech.nl"),
    ],
)
def test_normalise_email(raw: str, normalised: str) -> None:
    assert normalise_email(raw) == normalised


@pytest.mark.parametrize(
    "raw", ["", "jan", "jan@", "@initech.nl", "jan@initech", "jan@.nl", "jan@initech.", "j an@x.nl"]
)
def test_not_an_email(raw: str) -> None:
    with pytest.raises(PiiError) as info:
        normalise_email(raw)
    assert raw.strip() == "" or raw not in str(info.value)


@pytest.mark.parametrize(
    ("raw", "region", "e164"),
    [
        ("06 12345678", "NL", "+31612345678"),
        ("+31 (0)6-1234 5678", "NL", "+31612345678"),
        ("0031612345678", "NL", "+31612345678"),
        ("020 765 4321", "NL", "+31207654321"),
        ("0470 12 34 56", "BE", "+32470123456"),
        ("+1 415-555-2671", "NL", "+14155552671"),
    ],
)
def test_normalise_phone_to_e164(raw: str, region: str, e164: str) -> None:
    assert normalise_phone(raw, region) == e164


@pytest.mark.parametrize("raw", ["anonymous", "12", "+31 6 1234", "client:alice"])
def test_not_a_phone_number(raw: str) -> None:
    with pytest.raises(PiiError):
        normalise_phone(raw, "NL")


def test_keyed_hash_is_hmac_sha256_of_the_normalised_value() -> None:
    hasher = PiiHasher(b"key-one")
    expected = hmac.new(b"key-one", b"jan.jansen@initech.nl", hashlib.sha256).hexdigest()
    assert hasher.hash_email(" Jan.Jansen@Initech.NL") == expected
    assert (
        hasher.hash_phone("06 12345678") == hmac.new(b"key-one", b"+31612345678", hashlib.sha256).hexdigest()
    )
    assert PiiHasher("key-one").hash_email("jan.jansen@initech.nl") == expected  # str keys are UTF-8


def test_hash_differs_per_key_and_is_not_a_plain_hash() -> None:
    one = PiiHasher(b"key-one").hash_email("jan.jansen@initech.nl")
    two = PiiHasher(b"key-two").hash_email("jan.jansen@initech.nl")
    assert one != two
    assert hashlib.sha256(b"jan.jansen@initech.nl").hexdigest() not in (one, two)


def test_key_from_environment_and_file(tmp_path: Path) -> None:
    assert load_pii_key({PII_KEY_ENV: "  s3cret \n"}) == b"s3cret"
    key_file = tmp_path / "pii.key"
    key_file.write_bytes(b"from-file\n")
    assert load_pii_key({PII_KEY_FILE_ENV: str(key_file)}) == b"from-file"
    assert load_pii_key({PII_KEY_ENV: "env-wins", PII_KEY_FILE_ENV: str(key_file)}) == b"env-wins"
    with pytest.raises(PiiKeyError, match="set JOURNEYS_PII_KEY or JOURNEYS_PII_KEY_FILE"):
        load_pii_key({})
    with pytest.raises(PiiKeyError, match="cannot read the PII key file"):
        load_pii_key({PII_KEY_FILE_ENV: str(tmp_path / "missing.key")})
    (tmp_path / "empty.key").write_bytes(b"\n")
    with pytest.raises(PiiKeyError, match="is empty"):
        load_pii_key({PII_KEY_FILE_ENV: str(tmp_path / "empty.key")})
    with pytest.raises(PiiKeyError):
        PiiHasher(b"")


def test_env_key_is_read_only_when_needed() -> None:
    ctx = IngestContext.from_env(environ={})
    record = RawRecord(
        b'{"type":"page","messageId":"p","anonymousId":"a","timestamp":"2024-03-01T00:00:00Z"}', "r"
    )
    (tp,) = parse_records([record], ctx)  # no email or phone: no key needed
    assert isinstance(tp, Touchpoint)
    email = RawRecord(b'{"email":"a.b@initech.nl","timestamp":1,"event":"open","sg_event_id":"e"}', "r")
    with pytest.raises(PiiKeyError):  # a deployment error, not a dead letter
        list(parse_records([email], ctx))
    ctx = IngestContext.from_env(environ={PII_KEY_ENV: "k"})
    (tp,) = parse_records([email], ctx)
    assert tp.identifier_keys() == (("email", hmac.new(b"k", b"a.b@initech.nl", hashlib.sha256).hexdigest()),)


def test_scrub_properties_drops_pii_keys_at_any_depth_and_redacts_emails() -> None:
    properties = {
        "firstName": "Jan",
        "Last-Name": "Jansen",
        "plan": "gold",
        "address": {"city": "Amsterdam"},
        "shipping": {"city": "Utrecht", "postalCode": "3511AB", "lines": [{"street": "Oudegracht"}]},
        "note": "contact jan.jansen@initech.nl",
        "tags": ["a", "mail b%40initech.nl"],
    }
    assert scrub_properties(properties) == {
        "plan": "gold",
        "shipping": {"city": "Utrecht", "lines": [{}]},
        "note": "contact <email>",
        "tags": ["a", "mail <email>"],
    }


class _Text(str):
    """A str subclass: the scrubber's exact-type fast path must leave these to the general checks."""


def _reference_dict(source: dict, depth: int) -> dict:
    """The scrubber as first written (before its fast path), to compare against."""
    out = {}
    for key, value in source.items():
        if not isinstance(key, str) or _folded(key) in PII_PROPERTY_KEYS:
            continue
        if isinstance(value, dict):
            if depth < MAX_PROPERTY_DEPTH:
                out[key] = _reference_dict(value, depth + 1)
        elif isinstance(value, list):
            if depth < MAX_PROPERTY_DEPTH:
                out[key] = _reference_list(value, depth + 1)
        elif isinstance(value, str):
            out[key] = redact_emails(value)
        else:
            out[key] = value
    return out


def _reference_list(source: list, depth: int) -> list:
    out = []
    for value in source:
        if isinstance(value, dict):
            if depth < MAX_PROPERTY_DEPTH:
                out.append(_reference_dict(value, depth + 1))
        elif isinstance(value, list):
            if depth < MAX_PROPERTY_DEPTH:
                out.append(_reference_list(value, depth + 1))
        elif isinstance(value, str):
            out.append(redact_emails(value))
        else:
            out.append(value)
    return out


def _folded(key: str) -> str:
    return key.lower().replace("_", "").replace("-", "").replace(" ", "")


_KEYS = st.sampled_from(["plan", "email", "First-Name", "url", "Zip", "a b", "note", "ip", "city"]) | st.text(
    max_size=6
)
_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.sampled_from(["jan@x.nl", "a%40b.nl", "mail me: Jan@X.NL", "plain", ""])
    | st.text(max_size=10)
    | st.builds(_Text, st.sampled_from(["jan@x.nl", "plain"]))
)
_JSON = st.recursive(
    _SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_KEYS | st.integers(), inner, max_size=5),
    max_leaves=25,
)


@settings(max_examples=300, deadline=None)
@given(properties=st.dictionaries(_KEYS, _JSON, max_size=6))
def test_scrub_properties_equals_the_plain_walk(properties: dict) -> None:
    # repr, not ==: True and 1 are equal but must not swap, nor a str subclass for a str.
    assert repr(scrub_properties(properties)) == repr(_reference_dict(properties, 0))
    assert repr(scrub_properties(properties)) == repr(_reference_dict(properties, 0))  # verdicts cached now


def test_redact_emails_is_linear_on_hostile_input() -> None:
    for text in (
        "a@." * 50_000,
        "@." * 50_000 + "a",
        "x" * 100_000 + "@",
        "a." * 50_000 + "@" + "b." * 50_000,
    ):
        started = time.perf_counter()
        redact_emails(text)
        assert time.perf_counter() - started < 1.0
    assert redact_emails("mailto:Jan@X.NL?subject=hi") == "mailto:<email>?subject=hi"


CONTEXT = IngestContext.with_key(b"pii-test-key", now=lambda: datetime(2024, 6, 1, tzinfo=UTC))
FIXTURES_WITH_PII = (
    "segment/track_order_completed.json",
    "segment/identify.json",
    "segment/batch.json",
    "sendgrid/events.json",
    "twilio/inbound_call.txt",
    "twilio/outbound_calls.json",
    "callcsv/calls.csv",
    "social/export.jsonl",
)
RAW_VALUES = (
    "peter.gibbons",
    "Peter.Gibbons",
    "jake.peterson",
    "jan.jansen",
    "Jan.Jansen",
    "piet.de.vries",
    "Piet.de.Vries",
    "12345678",
    "87654321",
    "7654321",
    "470123456",
    "470 12 34 56",
)


@pytest.mark.parametrize("name", FIXTURES_WITH_PII)
def test_raw_values_never_reach_the_touchpoint(name: str) -> None:
    raw_input = (FIXTURES / name).read_text()
    assert any(value in raw_input for value in RAW_VALUES)  # the fixture does carry PII
    outcomes = list(parse_records(read_records(FIXTURES / name), CONTEXT))
    assert outcomes and all(isinstance(o, Touchpoint) for o in outcomes)
    for tp in outcomes:
        dump = tp.model_dump_json()
        for value in RAW_VALUES:
            assert value not in dump, (name, value)
        assert "@" not in dump.replace("<email>", "")
        for identifier in tp.identifiers:
            if identifier.type in ("email", "phone"):
                assert len(identifier.value) == 64 and int(identifier.value, 16) >= 0


def test_rejection_reasons_do_not_quote_personal_data() -> None:
    bodies = [
        {"email": "jan.jansen@initech", "timestamp": 1, "event": "open", "sg_event_id": "e"},
        {
            "call_id": "c",
            "started_at": "2024-03-05T09:12:00Z",
            "caller_number": "0612345",
            "outcome": "answered",
        },
        {
            "call_id": "c",
            "started_at": "2024-03-05T09:12:00Z",
            "caller_number": "0612345678",
            "outcome": "0612345678",
        },
    ]
    letters = list(parse_records([RawRecord(orjson.dumps(b), "r") for b in bodies], CONTEXT))
    for letter in letters:
        assert "jansen" not in letter.reason and "0612345" not in letter.reason, letter.reason


@pytest.mark.parametrize("name", FIXTURES_WITH_PII)
def test_raw_values_never_reach_a_dead_letter(name: str) -> None:
    # The same documented records, each forced into the wrong format so that all
    # of them are dead-lettered with their personal data still inside.
    wrong = "sendgrid" if not name.startswith("sendgrid") else "segment"
    letters = list(parse_records(read_records(FIXTURES / name), CONTEXT, wrong))
    assert letters and all(isinstance(letter, DeadLetter) for letter in letters)
    for letter in letters:
        raw = letter.raw.decode()
        for value in RAW_VALUES:
            assert value not in raw, (name, value, raw)
        assert redact_emails(raw) == raw, raw  # no address left (handles and message ids may stay)


def test_redact_record_keeps_shape_and_uses_the_keyed_hashes() -> None:
    hasher = PiiHasher(b"k")
    email = "<email:" + hasher.hash_email("jan@ziggo.nl") + ">"
    phone = "<phone:" + hasher.hash_phone("+31612345678") + ">"
    record = {
        "traits": {"email": " Jan@Ziggo.NL", "firstName": "Jan", "phone": "06 12345678", "age": 41},
        "properties": {
            "url": "https://x.nl/?e=jan%40ziggo.nl",
            "note": "bel 06-12345678 terug",
            "n": 1700000000,
        },
    }
    assert orjson.loads(redact_record(orjson.dumps(record), hasher)) == {
        "traits": {"email": email, "firstName": "<redacted>", "phone": phone, "age": 41},
        "properties": {"url": f"https://x.nl/?e={email}", "note": f"bel {phone} terug", "n": 1700000000},
    }
    # A Twilio form body: `+` decodes as a space, the number is still found.
    form = redact_record(b"CallSid=CA1&From=+31612345678&CallStatus=odd", hasher)
    assert parse_qsl(form.decode()) == [("CallSid", "CA1"), ("From", phone), ("CallStatus", "odd")]
    # A CSV row and text that is neither JSON nor a form.
    assert redact_record(b"CC-1,2024-03-05T09:12:00Z,06 12345678,billing", hasher) == (
        f"CC-1,2024-03-05T09:12:00Z,{phone},billing".encode()
    )
    # Nothing to redact: the exact bytes, even when they are not UTF-8.
    for raw in (b'{ "event" :  "open" }', b"\xff\xfe", b"a=b&c=d"):
        assert redact_record(raw, hasher) == raw
