"""SendGrid Event Webhook POSTs from tests/fixtures/sendgrid to email touchpoints, and rejections."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingest.adapters import sendgrid
from ingest.adapters.base import as_int, opt_str
from ingest.pii import is_pii_key, redact_emails, scrub_value
from ingest.records import DeadLetter
from journeys.touchpoint import Channel, Touchpoint

MESSAGE_0 = "14c5d75ce93.dfd.64b469.filter0001.16648.5515E0B88.000000000000000000000"


def test_all_eleven_event_types(parse_file, digest, now) -> None:
    outcomes = parse_file("sendgrid/events.json")
    assert all(isinstance(tp, Touchpoint) for tp in outcomes)
    assert [tp.action for tp in outcomes] == [
        "processed",
        "deferred",
        "delivered",
        "open",
        "click",
        "bounce",
        "dropped",
        "spamreport",
        "unsubscribe",
        "group_unsubscribe",
        "group_resubscribe",
    ]
    jan, piet = digest("jan.jansen@initech.nl"), digest("piet.de.vries@initech.nl")
    assert [tp.identifier_keys() for tp in outcomes] == [(("email", jan),)] * 5 + [(("email", piet),)] * 2 + [
        (("email", jan),)
    ] * 4
    for tp in outcomes:
        assert (tp.channel, tp.source, tp.received_at) == (Channel.EMAIL, "sendgrid", now)
        assert "ip" not in tp.properties
        dump = tp.model_dump_json()
        assert "jansen" not in dump.lower() and "vries" not in dump and "255.255" not in dump
    assert [tp.event_id for tp in outcomes[:3]] == [
        "rbtnWrG1DVDGGGFHFyun0A==",
        "t7LEShmowp86DTdUW8M-GQ==",
        "Bf1MTd7-TaKXZDUsqSb7Mw==",
    ]
    assert outcomes[0].occurred_at == datetime(2024, 3, 5, 10, 0, tzinfo=UTC)


def test_properties_per_event(parse_file) -> None:
    processed, deferred, _, opened, click, bounce, dropped, spam, _, group_unsub, _ = parse_file(
        "sendgrid/events.json"
    )
    assert processed.properties == {
        "category": ["voorjaarsactie"],
        "campaign": "Voorjaarsactie 2024",
        "campaign_id": 12345,
        "message_id": MESSAGE_0,
    }
    assert deferred.properties == {
        "category": ["voorjaarsactie"],
        "message_id": MESSAGE_0,
        "response": "400 try again later",
        "attempt": 5,
    }
    assert opened.properties["category"] == ["voorjaarsactie", "nieuwsbrief"]
    assert opened.properties["machine_open"] is False
    assert click.properties == {
        "category": ["voorjaarsactie"],
        "user_agent": "Mozilla/5.0 (iPhone; CPU iPhone OS 17_3 like Mac OS X)",
        "message_id": MESSAGE_0,
        "url": "https://shop.initech.nl/voorjaar?utm_source=email&ref=<email>",
        "order_ref": "A-1001",  # a custom (unique) arg
    }
    assert bounce.properties == {
        "category": ["voorjaarsactie"],
        "status": "5.1.1",
        "bounce_type": "bounce",
        "bounce_classification": "Invalid Address",
        "message_id": "14c5d75ce93.dfd.64b469.filter0001.16648.5515E0B88.000000000000000000001",
        "reason": "550 5.1.1 <<email>>: Recipient address rejected: User unknown",
    }
    assert dropped.properties["reason"] == "Bounced Address"
    assert spam.properties == {"message_id": MESSAGE_0}
    assert group_unsub.properties["asm_group_id"] == 10


def test_one_webhook_post_per_line(parse_file) -> None:
    outcomes = parse_file("sendgrid/posts.jsonl")
    assert [type(o).__name__ for o in outcomes] == ["Touchpoint", "Touchpoint", "DeadLetter", "Touchpoint"]
    assert outcomes[2].reason == "empty JSON array: no records"
    assert outcomes[2].origin == "posts.jsonl:2"
    assert outcomes[3].properties["machine_open"] is True


def test_rejections(parse_file) -> None:
    letters = parse_file("sendgrid/rejects.json")
    assert all(isinstance(letter, DeadLetter) for letter in letters)
    assert [(letter.origin, letter.format, letter.reason) for letter in letters] == [
        ("rejects.json[0]", "sendgrid", "sg_event_id: missing"),
        ("rejects.json[1]", "sendgrid", "event: 'account_status_change' is not a SendGrid recipient event"),
        ("rejects.json[2]", "sendgrid", "timestamp: must be a Unix timestamp, got 'yesterday'"),
        ("rejects.json[3]", "sendgrid", "no usable identifier: email: not an email address"),
        ("rejects.json[4]", "sendgrid", "no usable identifier: email: placeholder value"),
        ("rejects.json[5]", "sendgrid", "no usable identifier: email: missing"),
        ("rejects.json[6]", "sendgrid", "timestamp: missing"),
        ("rejects.json[7]", "unknown", "unrecognised format: a JSON string"),
    ]
    assert orjson.loads(letters[3].raw)["sg_event_id"] == "r-4"


def test_millisecond_timestamps_and_string_ids(parse_raw, digest) -> None:
    event = {"email": "a.b@initech.nl", "timestamp": 1709632800123, "event": "open", "sg_event_id": 123}
    (tp,) = parse_raw(orjson.dumps(event), "sendgrid")
    assert tp.event_id == "123"
    assert tp.occurred_at == datetime(2024, 3, 5, 10, 0, 0, 123000, tzinfo=UTC)
    assert tp.identifier_keys() == (("email", digest("a.b@initech.nl")),)


def test_custom_args_are_scrubbed(parse_raw) -> None:
    event = {
        "email": "a.b@initech.nl",
        "timestamp": 1709632800,
        "event": "delivered",
        "sg_event_id": "e-1",
        "first_name": "Anna",
        "customer": {"phone": "+31612345678", "tier": "gold", "note": "mail a.b@initech.nl"},
    }
    (tp,) = parse_raw(orjson.dumps(event))
    assert tp.properties == {"customer": {"tier": "gold", "note": "mail <email>"}}


@pytest.mark.parametrize(
    ("event", "reason"),
    [
        (
            {"event": "open", "email": "a@b.nl", "timestamp": 1, "sg_event_id": ["x"]},
            "sg_event_id: must be a string, got array",
        ),
        (
            {"event": "open", "email": "a@b.nl", "timestamp": 1e300, "sg_event_id": "x"},
            "timestamp: Unix timestamp out of range",
        ),
        ({"event": "", "email": "a@b.nl", "timestamp": 1, "sg_event_id": "x"}, "event: missing"),
    ],
)
def test_more_rejections(parse_raw, event: dict, reason: str) -> None:
    (letter,) = parse_raw(orjson.dumps(event))
    assert isinstance(letter, DeadLetter)
    assert letter.reason == reason


def _reference_properties(event: dict[str, Any]) -> dict[str, Any]:
    """The optional fields as first mapped (before the absent-field shortcuts), to compare against."""
    properties: dict[str, Any] = {}
    category = event.get("category")
    if isinstance(category, str) and category.strip():
        properties["category"] = [category.strip()]
    elif isinstance(category, list):
        properties["category"] = [item for item in category if isinstance(item, str) and item]
    campaign = opt_str(event, "campaign") or opt_str(event, "marketing_campaign_name")
    if campaign is None:
        campaign = opt_str(event, "singlesend_name")
    if campaign is not None:
        properties["campaign"] = campaign
    for source, target in sendgrid._COPIED:
        value = event.get(source)
        if isinstance(value, str | int) and not isinstance(value, bool) and value != "":
            properties[target] = value
    for source, target in sendgrid._REDACTED:
        value = opt_str(event, source)
        if value is not None:
            properties[target] = redact_emails(value)
    attempt = as_int(event.get("attempt"))
    if attempt is not None:
        properties["attempt"] = attempt
    group = as_int(event.get("asm_group_id"))
    if group is not None:
        properties["asm_group_id"] = group
    if isinstance(event.get("sg_machine_open"), bool):
        properties["machine_open"] = event["sg_machine_open"]
    for key, value in event.items():
        if key not in sendgrid._MAPPED and key not in properties and not is_pii_key(key):
            properties[key] = redact_emails(value) if isinstance(value, str) else scrub_value(value)
    return properties


_ANY_VALUE = st.one_of(
    st.none(),
    st.booleans(),
    st.sampled_from([0, 3, -1, 2.0, 2.5, "", " ", "5", " 7 ", "x", "see a@b.nl", " padded "]),
    st.lists(st.sampled_from(["a", "", 1, None]), max_size=3),
    st.just({"phone": "+31612345678", "tier": "gold"}),
)
_OPTIONAL_KEYS = [
    *(source for source, _ in sendgrid._COPIED),
    *(source for source, _ in sendgrid._REDACTED),
    "attempt",
    "asm_group_id",
    "sg_machine_open",
    "category",
    "campaign",
    "marketing_campaign_name",
    "singlesend_name",
    "ip",
    "tls",
    "order_ref",
    "first_name",
    "bounce_type",
    "message_id",
]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(optional=st.dictionaries(st.sampled_from(_OPTIONAL_KEYS), _ANY_VALUE, max_size=8))
def test_optional_fields_map_as_the_plain_walk(ctx, now, optional: dict[str, Any]) -> None:
    event = {"event": "bounce", "sg_event_id": "e1", "timestamp": 1709632800, "email": "a@b.nl", **optional}
    fields = sendgrid.to_fields(event, ctx, now)
    # repr as well as ==: True must not come back as 1, nor the order change.
    assert repr(fields.properties) == repr(_reference_properties(event))
