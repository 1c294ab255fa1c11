"""Segment Spec calls from tests/fixtures/segment to web touchpoints, and rejections."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
import pytest

from ingest.records import DeadLetter
from journeys.touchpoint import Channel, Identifier, Touchpoint


def ids(*pairs: tuple[str, str]) -> tuple[Identifier, ...]:
    return tuple(Identifier(type=t, value=v) for t, v in pairs)


def only(outcomes: list) -> Touchpoint:
    assert len(outcomes) == 1, outcomes
    assert isinstance(outcomes[0], Touchpoint), outcomes[0]
    return outcomes[0]


def test_track_order_completed(parse_file, make_ctx, digest, now) -> None:
    context = make_ctx(extra_identifier_types={"stripe_customer_id"})
    tp = only(parse_file("segment/track_order_completed.json", context=context))
    assert tp.event_id == "022bb90c-bbac-11e4-8dfc-aa07a5b093db"
    assert (tp.channel, tp.source, tp.action) == (Channel.WEB, "segment", "Order Completed")
    # `timestamp` wins over originalTimestamp/sentAt/receivedAt.
    assert tp.occurred_at == datetime(2024, 3, 5, 10, 15, 32, 327000, tzinfo=UTC)
    assert tp.received_at == now
    assert tp.identifiers == ids(
        ("user_id", "97980cfea0067"),
        ("anonymous_id", "507f191e810c19729de860ea"),
        (
            "email",
            digest("peter.gibbons@initech.nl"),
        ),  # "  Peter.Gibbons@Initech.nl " trimmed and lower-cased
        ("phone", digest("+31612345678")),  # "06 12345678" read in NL -> +31612345678
        ("device_id", "B5372DB0-C21E-11E4-8DFC-AA07A5B093DB"),
        # hubspot_contact_id is not declared, so it is ignored
        ("stripe_customer_id", "cus_N7a8Lz0q"),
    )
    assert tp.value == 25.0 and tp.currency == "EUR"  # revenue before total
    assert tp.persona == "bargain-hunter"
    props = tp.properties
    assert "email" not in props
    assert props["products"][0] == {
        "product_id": "507f1f77bcf86cd799439011",
        "sku": "45790-32",
        "price": 19,
        "quantity": 1,
        "category": "Games",
        "url": "https://www.example.com/product/path",
        "image_url": "https:///www.example.com/product/path.jpg",
    }
    assert props["path"] == "/checkout/complete"
    assert props["title"] == "Bedankt voor je bestelling"
    assert props["referrer"] == "https://shop.initech.nl/checkout?email=<email>"
    assert props["campaign"] == {
        "name": "Voorjaarsactie",
        "source": "Newsletter",
        "medium": "email",
        "term": "bordspellen",
        "content": "image link",
    }
    assert "gibbons" not in tp.model_dump_json().lower()


def test_external_ids_ignored_without_config(parse_file) -> None:
    tp = only(parse_file("segment/track_order_completed.json"))
    assert [i.type for i in tp.identifiers] == ["user_id", "anonymous_id", "email", "phone", "device_id"]


def test_page(parse_file) -> None:
    tp = only(parse_file("segment/page.json"))
    assert tp.action == "Page Viewed"
    assert tp.occurred_at == datetime(2024, 3, 4, 22, 28, 55, 111000, tzinfo=UTC)
    assert tp.identifiers == ids(("user_id", "97980cfea0067"), ("anonymous_id", "507f191e810c19729de860ea"))
    assert tp.properties == {
        "title": "Welcome | Initech",
        "url": "https://www.initech.nl/",
        "page_name": "Home",
    }


def test_screen_corrects_device_clock_skew(parse_file) -> None:
    tp = only(parse_file("segment/screen.json"))
    assert tp.action == "Screen Viewed"
    # receivedAt 10:00:05 - (sentAt 10:00:03 - originalTimestamp 10:00:00)
    assert tp.occurred_at == datetime(2024, 3, 4, 10, 0, 2, tzinfo=UTC)
    assert ("device_id", "B5372DB0-C21E-11E4-8DFC-AA07A5B093DB") in tp.identifier_keys()
    assert tp.properties == {"variation": "blue signup button", "screen_name": "Home"}


def test_identify_hashes_traits_and_keeps_them_out_of_properties(parse_file, digest) -> None:
    tp = only(parse_file("segment/identify.json"))
    assert tp.action == "Identify"
    assert tp.identifiers == ids(
        ("user_id", "97980cfea0067"),
        ("anonymous_id", "507f191e810c19729de860ea"),
        ("email", digest("peter.gibbons@initech.nl")),
        ("phone", digest("+31612345678")),  # "+31 6 12345678"
    )
    assert tp.properties == {}
    assert tp.persona == "loyal-customer"
    dump = tp.model_dump_json()
    for raw in ("Peter", "Gibbons", "6th St", "1011AB", "12345678", "8.8.8.8"):
        assert raw not in dump


def test_alias_links_previous_id(parse_file) -> None:
    tp = only(parse_file("segment/alias.json"))
    assert tp.action == "Alias"
    assert tp.identifiers == ids(
        ("user_id", "507f191e81"),
        ("anonymous_id", "507f191e810c19729de860ea"),
        ("anonymous_id", "39239-239239-239239-23923"),
    )


def test_group(parse_file) -> None:
    tp = only(parse_file("segment/group.json"))
    assert tp.action == "Group"
    assert tp.properties == {"group_id": "0e8c78ea9d97a7b8185e8632"}
    # group traits describe the company, not the person: no identifiers from them
    assert tp.identifiers == ids(("user_id", "97980cfea0067"), ("anonymous_id", "507f191e810c19729de860ea"))


def test_batch_calls_inherit_envelope_context_and_sent_at(parse_file, digest) -> None:
    first, second, third = parse_file("segment/batch.json")
    assert [tp.event_id for tp in (first, second, third)] == ["b-0001", "b-0002", "b-0003"]
    assert [tp.action for tp in (first, second, third)] == ["Identify", "Product Viewed", "Page Viewed"]
    assert first.identifiers == ids(
        ("user_id", "019mr8mf4r"),
        ("email", digest("jake.peterson@initech.nl")),
        ("device_id", "batch-device-01"),
    )
    assert second.occurred_at == datetime(2024, 3, 2, 0, 30, 12, 984000, tzinfo=UTC)
    # the call's own context.page wins key by key over the envelope's
    assert second.properties == {
        "product_id": "507f1f77bcf86cd799439011",
        "price": 18.99,
        "url": "https://shop.initech.nl/p/monopoly",
        "title": "Monopoly",
        "referrer": "https://www.google.com/",
    }
    # envelope sentAt 00:32:00, call receivedAt 00:32:05, originalTimestamp 00:31:00
    assert third.occurred_at == datetime(2024, 3, 2, 0, 31, 5, tzinfo=UTC)
    assert third.identifiers == ids(("anonymous_id", "a-7731"), ("device_id", "batch-device-01"))


def test_bad_batch_element_is_one_dead_letter_with_its_own_raw(parse_raw) -> None:
    body = {
        "batch": [
            {
                "type": "track",
                "messageId": "m1",
                "anonymousId": "a1",
                "event": "X",
                "timestamp": "2024-03-01T00:00:00Z",
            },
            {"type": "track", "messageId": "m2", "anonymousId": "a1", "timestamp": "2024-03-01T00:00:00Z"},
            "oops",
        ],
        "sentAt": "2024-03-01T00:00:01Z",
    }
    good, missing_event, not_object = parse_raw(orjson.dumps(body))
    assert isinstance(good, Touchpoint) and good.event_id == "m1"
    assert isinstance(missing_event, DeadLetter)
    assert missing_event.reason == "event: missing"
    assert missing_event.origin == "test#batch[1]"
    assert orjson.loads(missing_event.raw)["messageId"] == "m2"
    assert orjson.loads(missing_event.raw)["sentAt"] == "2024-03-01T00:00:01Z"  # replayable alone
    assert isinstance(not_object, DeadLetter)
    assert not_object.reason == "batch[2]: must be an object, got string"


CALL = {"type": "track", "messageId": "m-1", "event": "Signed Up", "anonymousId": "a-1"}


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"messageId": None}, "messageId: missing"),
        ({"event": ""}, "event: missing"),
        ({"event": 12.5}, "event: must be a string, got number"),
        ({}, "timestamp: missing (no originalTimestamp, receivedAt or sentAt either)"),
        ({"timestamp": "2024-03-01 10:00:00"}, "timestamp: timestamp must carry a time zone"),
        ({"timestamp": "gisteren"}, "timestamp: not an ISO-8601 timestamp"),
        ({"timestamp": 1709287200}, "timestamp: must be an ISO-8601 string, got number"),
        ({"timestamp": "0001-01-01T00:00:00+01:00"}, "timestamp: timestamp out of range"),
        (
            {
                "originalTimestamp": "0001-01-01T00:00:00Z",
                "sentAt": "9999-12-31T00:00:00Z",
                "receivedAt": "0001-01-02T00:00:00Z",
            },
            "originalTimestamp: clock-skew correction is out of range",
        ),
        ({"context": "web", "timestamp": "2024-03-01T10:00:00Z"}, "context: must be an object, got string"),
        (
            {"anonymousId": "undefined", "userId": "", "timestamp": "2024-03-01T10:00:00Z"},
            "no usable identifier: anonymousId: placeholder value; userId: missing",
        ),
        (
            {
                "anonymousId": None,
                "timestamp": "2024-03-01T10:00:00Z",
                "context": {"traits": {"email": "nope"}},
            },
            "no usable identifier: context.traits.email: not an email address; userId, anonymousId, "
            "context.traits.phone: missing",
        ),
        (
            {"event": "x" * 300, "timestamp": "2024-03-01T10:00:00Z"},
            "action: String should have at most 256 characters",
        ),
    ],
)
def test_rejections(parse_raw, change: dict, reason: str) -> None:
    (letter,) = parse_raw(orjson.dumps({**CALL, **change}))
    assert isinstance(letter, DeadLetter)
    assert (letter.reason, letter.format, letter.origin) == (reason, "segment", "test")


def test_user_id_that_is_an_email_is_hashed(parse_raw, digest) -> None:
    call = {**CALL, "userId": "Jan@Initech.nl", "timestamp": "2024-03-01T10:00:00+01:00"}
    (tp,) = parse_raw(orjson.dumps(call))
    assert ("user_id", digest("jan@initech.nl")) in tp.identifier_keys()
    assert tp.occurred_at == datetime(2024, 3, 1, 9, 0, tzinfo=UTC)


def test_page_search_with_email_is_redacted(parse_raw) -> None:
    call = {
        "type": "page",
        "messageId": "p-1",
        "anonymousId": "a-1",
        "timestamp": "2024-03-01T10:00:00Z",
        "properties": {"search": "?email=jan%40initech.nl", "url": "https://x.nl/?e=jan@initech.nl"},
    }
    (tp,) = parse_raw(orjson.dumps(call))
    assert tp.properties == {"search": "?email=<email>", "url": "https://x.nl/?e=<email>"}
