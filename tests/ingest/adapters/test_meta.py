"""Meta webhooks (Page feed, Instagram comments, Messenger / Instagram messaging) to social touchpoints."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
import pytest

from ingest.records import DeadLetter
from journeys.touchpoint import Channel, Touchpoint

POST = "104837192345678_798521367712345"


def test_single_feed_comment_is_the_whole_record(parse_file, now) -> None:
    (tp,) = parse_file("meta/page_feed_comment.json")
    assert isinstance(tp, Touchpoint)
    assert (tp.channel, tp.source, tp.action, tp.received_at) == (
        Channel.SOCIAL,
        "meta",
        "social.comment",
        now,
    )
    assert tp.event_id == "facebook:comment:798521367712345_1123581321345589"
    assert tp.occurred_at == datetime(2024, 3, 5, 9, 13, 20, tzinfo=UTC)
    assert tp.identifier_keys() == (("social_handle", "facebook:6251893471538216"),)
    assert tp.properties == {"platform": "facebook", "item": "comment", "post_id": POST, "text_length": 35}
    assert "Jan" not in tp.model_dump_json() and "voorraad" not in tp.model_dump_json()


def test_feed_notification_with_several_entries_and_changes(parse_file) -> None:
    comment, reply, reaction, post, own, edit = parse_file("meta/page_feed.json")
    assert [o.action for o in (comment, reply, reaction, post)] == [
        "social.comment",
        "social.reply",
        "social.reaction",
        "social.post",
    ]
    assert reply.properties == {
        "platform": "facebook",
        "item": "comment",
        "parent_id": "798521367712345_1123581321345589",
        "post_id": POST,
        "text_length": 22,
    }
    assert reply.identifier_keys() == (("social_handle", "facebook:7012345678901234"),)
    assert reaction.event_id == f"facebook:reaction:{POST}:7012345678901234:love"
    assert reaction.properties == {
        "platform": "facebook",
        "item": "reaction",
        "reaction_type": "love",
        "post_id": POST,
    }
    assert post.event_id == "facebook:post:104837192345678_798529999912345"
    assert post.occurred_at == datetime(2024, 3, 5, 12, 0, tzinfo=UTC)
    assert isinstance(own, DeadLetter) and isinstance(edit, DeadLetter)
    assert (own.origin, own.reason) == (
        "page_feed.json#entry[1].changes[1]",
        "value.from.id: the page or account itself, not a customer",
    )
    assert (edit.origin, edit.reason) == (
        "page_feed.json#entry[1].changes[2]",
        "value.verb: 'edited' changes an existing item; only 'add' is a new interaction",
    )
    # a split-out leaf is a one-item notification of its own: replayable
    replay = orjson.loads(edit.raw)
    assert replay["object"] == "page"
    assert replay["entry"][0]["id"] == "104837192345678"
    assert replay["entry"][0]["changes"][0]["value"]["verb"] == "edited"


def test_instagram_comments(parse_file) -> None:
    comment, reply, own, mention = parse_file("meta/instagram_comments.json")
    # Business Login shape: field/value directly on the entry; no timestamp, so entry.time
    assert comment.event_id == "instagram:comment:17865799348089039"
    assert comment.occurred_at == datetime(2024, 3, 5, 10, 10, tzinfo=UTC)
    assert comment.identifier_keys() == (("social_handle", "instagram:1284736509182736"),)
    assert comment.properties == {
        "platform": "instagram",
        "post_id": "18031234567890123",
        "media_product_type": "FEED",
        "text_length": 25,
    }
    assert reply.action == "social.reply"
    assert reply.properties["parent_id"] == "17865799348089039"
    assert isinstance(own, DeadLetter)
    assert (own.origin, own.reason) == (
        "instagram_comments.json[2]",
        "value.from.id: the page or account itself, not a customer",
    )
    assert isinstance(mention, DeadLetter)
    assert mention.reason == (
        "no usable identifier: Instagram mentions notifications name no author"
        " (look it up via mentioned_comment)"
    )


def test_messenger(parse_file) -> None:
    inbound, echo, delivery, read = parse_file("meta/messenger.json")
    assert inbound.action == echo.action == "social.direct_message"
    assert inbound.occurred_at == datetime(2024, 3, 5, 12, 16, 39, 876000, tzinfo=UTC)  # milliseconds
    assert inbound.identifier_keys() == (("social_handle", "facebook:24567890123456789"),)
    assert inbound.properties == {"platform": "facebook", "direction": "inbound", "text_length": 35}
    # an echo is the business writing: the customer is the recipient
    assert echo.identifier_keys() == inbound.identifier_keys()
    assert echo.properties["direction"] == "outbound"
    assert (delivery.origin, delivery.reason) == (
        "messenger.json#entry[1].messaging[1]",
        "messaging: delivery events are not touchpoints; only messages are",
    )
    assert read.reason == "messaging: read events are not touchpoints; only messages are"


def test_instagram_messaging(parse_file) -> None:
    (tp,) = parse_file("meta/instagram_messaging.json")
    assert tp.identifier_keys() == (("social_handle", "instagram:1284736509182736"),)
    assert tp.properties == {"platform": "instagram", "direction": "inbound", "attachment_count": 1}
    assert tp.occurred_at == datetime(2024, 3, 5, 14, 46, 39, tzinfo=UTC)


@pytest.mark.parametrize(
    ("notification", "reason"),
    [
        ({"object": "page", "entry": []}, "entry: holds no entries"),
        ({"object": "instagram", "entry": {"id": "1"}}, "entry: must be an array, got object"),
        (
            {"object": "page", "entry": [{"id": "1", "time": 1, "changes": []}]},
            "entry[0]: holds no changes or messaging",
        ),
        (
            {"object": "page", "entry": [{"id": "1", "changes": [{"field": "ratings", "value": {}}]}]},
            "field: 'ratings' notifications are not supported",
        ),
        (
            {
                "object": "page",
                "entry": [
                    {"id": "1", "changes": [{"field": "feed", "value": {"item": "comment", "verb": "add"}}]}
                ],
            },
            "value.comment_id: missing",
        ),
        (
            {
                "object": "page",
                "entry": [
                    {
                        "id": "1",
                        "changes": [
                            {"field": "feed", "value": {"item": "comment", "verb": "add", "comment_id": "c"}}
                        ],
                    }
                ],
            },
            "value.created_time: missing (and no entry.time)",
        ),
    ],
)
def test_rejections(parse_raw, notification: dict, reason: str) -> None:
    (letter,) = parse_raw(orjson.dumps(notification))
    assert isinstance(letter, DeadLetter)
    assert (letter.format, letter.reason) == ("meta", reason)
