"""The journeys.social/v1 export to social touchpoints, and rejections."""

from __future__ import annotations

from datetime import UTC, datetime

from ingest.records import DeadLetter
from journeys.touchpoint import Channel, Touchpoint


def test_export(parse_file, digest, now) -> None:
    mention, comment, reply, dm = parse_file("social/export.jsonl")
    for tp in (mention, comment, reply, dm):
        assert isinstance(tp, Touchpoint)
        assert (tp.channel, tp.source, tp.received_at) == (Channel.SOCIAL, "social", now)
        assert "text" not in tp.properties
    assert [tp.action for tp in (mention, comment, reply, dm)] == [
        "social.mention",
        "social.comment",
        "social.reply",
        "social.direct_message",
    ]
    assert mention.event_id == "brandwatch:8812736"
    assert mention.identifier_keys() == (("social_handle", "x:janjansen"),)  # "@JanJansen"
    assert mention.properties == {"platform": "x", "post_id": "1765019283746501234", "text_length": 48}
    assert mention.sentiment == 0.1
    assert comment.occurred_at == datetime(2024, 3, 5, 8, 30, tzinfo=UTC)
    assert comment.identifier_keys() == (
        ("social_handle", "instagram:janj_1985"),
        ("user_id", "97980cfea0067"),
    )
    assert comment.persona == "bargain-hunter"
    assert reply.properties == {
        "platform": "facebook",
        "post_id": "112233_445566",
        "in_reply_to": "445566_778899",
        "text_length": 26,
    }
    assert reply.sentiment == -0.75
    assert dm.identifier_keys() == (("email", digest("piet.de.vries@initech.nl")),)
    assert "Vries" not in dm.model_dump_json() and "terugbellen" not in dm.model_dump_json()


def test_rejections(parse_file) -> None:
    letters = parse_file("social/rejects.jsonl")
    assert all(isinstance(letter, DeadLetter) for letter in letters)
    assert [letter.reason for letter in letters] == [
        "schema: 'journeys.social/v2' is not supported; this build reads journeys.social/v1",
        "kind: 'like' is not mention, comment, reply or direct_message",
        "platform: a 7-character string is not a platform name (lower-case letters, digits, _ or -)",
        "occurred_at: timestamp must carry a time zone",
        "sentiment: must be a number from -1 to 1, got 2",
        "no usable identifier: handle: placeholder value; user_id, email: missing",
        "id: missing",
        "text: must be a string, got array",
    ]
    assert {letter.format for letter in letters} == {"social"}
    assert [letter.origin for letter in letters][:2] == ["rejects.jsonl:1", "rejects.jsonl:2"]
