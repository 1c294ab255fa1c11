"""`journeys produce`: files replayed into the raw topics of a real broker, framed and keyed as documented."""

from __future__ import annotations

import re
import socket
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest

from ingest.context import IngestContext
from ingest.files import read_records
from ingest.pii import PiiHasher
from ingest.pipeline import parse_records
from ingest.producer import produce_files, records_in_event_time
from ingest.records import DeadLetter
from ingest.topics import Topics, message_key, record_from_message

FIXTURES = Path(__file__).parents[1] / "fixtures"


def closed_port() -> str:
    """A loopback address nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


def test_every_record_lands_once_on_its_channel_topic(
    kafka_bootstrap: str, topic_prefix: str, pii_key: str, tmp_path: Path, read_back: Any
) -> None:
    unknown = tmp_path / "mystery.jsonl"
    unknown.write_text('{"what": "no provider sends this"}\nnot json at all, phone 06 12345678\n')
    files = [
        FIXTURES / "segment" / "batch.json",
        FIXTURES / "sendgrid" / "events.json",
        FIXTURES / "twilio" / "inbound_call.txt",
        FIXTURES / "callcsv" / "calls_bad.csv",
        FIXTURES / "social" / "export.jsonl",
        unknown,
    ]
    topics = Topics(topic_prefix)
    hasher = PiiHasher(pii_key)
    seen: list[int] = []
    started: list[Path] = []
    summary = produce_files(
        files, kafka_bootstrap, topics, hasher, progress=seen.append, on_file=started.append
    )
    assert summary.failed == 0 and sum(seen) == summary.records
    assert started == files and set(summary.by_file) == {str(f) for f in files}
    assert summary.unplaced == 2

    messages = read_back(kafka_bootstrap, *topics.all_raw, count=summary.records)
    assert len(messages) == summary.records
    assert Counter(m.topic for m in messages) == summary.by_topic
    origins = [dict(m.headers)["origin"] for m in messages]
    assert len(set(origins)) == len(origins)  # each record exactly once
    assert read_back(kafka_bootstrap, topics.dead_letters) == []
    by_format: dict[str | None, set[str]] = {}
    for message in messages:
        record = record_from_message(
            message.value,
            message.headers,
            topic=message.topic,
            partition=message.partition,
            offset=message.offset,
        )
        by_format.setdefault(record.format, set()).add(message.topic)
        # Keys are keyed hashes of the source identity: never an address or a number.
        assert message.key is None or message.key == message_key(message.value, hasher)
        assert message.key is None or re.fullmatch(rb"[0-9a-f]{32}", message.key)
        assert all(b"@" not in value and b"+31" not in value for _, value in message.headers)
        if record.format is None:  # no format header at all, not an empty one
            assert "format" not in dict(message.headers)
    assert by_format == {
        "segment": {topics.raw("web")},
        "sendgrid": {topics.raw("email")},
        "twilio": {topics.raw("phone")},
        "callcsv": {topics.raw("phone")},
        "social": {topics.raw("social")},
        None: {topics.raw("web")},  # no known format: the normalise stage dead-letters them
    }


def test_a_damaged_csv_row_carries_its_error(
    kafka_bootstrap: str, topic_prefix: str, pii_key: str, read_back: Any
) -> None:
    topics = Topics(topic_prefix)
    summary = produce_files(
        [FIXTURES / "callcsv" / "calls_bad.csv"], kafka_bootstrap, topics, PiiHasher(pii_key)
    )
    records = [
        record_from_message(m.value, m.headers, topic=m.topic, partition=m.partition, offset=m.offset)
        for m in read_back(kafka_bootstrap, topics.raw("phone"), count=summary.records)
    ]
    assert len(records) == summary.records
    damaged = [r for r in records if r.error is not None]
    assert damaged and all("fields" in r.error for r in damaged if r.error)
    assert all(r.format == "callcsv" for r in records)
    # The error header survives the trip, and the pipeline turns it into a dead letter with that reason.
    (letter,) = list(parse_records(damaged[:1], IngestContext(hasher=PiiHasher(pii_key))))
    assert isinstance(letter, DeadLetter) and letter.reason == damaged[0].error


def test_the_same_source_identity_always_gets_the_same_key(pii_key: str) -> None:
    hasher = PiiHasher(pii_key)
    first = b'{"type": "track", "anonymousId": "a-1", "event": "x"}'
    later = b'{"type": "page", "anonymousId": "a-1", "name": "Home"}'
    assert message_key(first, hasher) == message_key(later, hasher) is not None
    assert message_key(b'{"type": "page", "anonymousId": "a-2"}', hasher) != message_key(first, hasher)
    assert message_key(b"", hasher) is None


def test_unreachable_kafka_is_an_error(topic_prefix: str, pii_key: str) -> None:
    with pytest.raises(Exception, match=r"(?i)kafka|broker|connect|timed out"):
        produce_files(
            [FIXTURES / "segment" / "batch.json"],
            closed_port(),
            Topics(topic_prefix),
            PiiHasher(pii_key),
            timeout=1,
        )


def test_a_record_over_the_message_size_becomes_a_dead_letter(
    kafka_bootstrap: str, topic_prefix: str, pii_key: str, tmp_path: Path, read_back: Any
) -> None:
    huge = tmp_path / "huge.json"
    huge.write_bytes(orjson.dumps({"email": "jan@ziggo.nl", "blob": "x" * 2_000_000}))
    topics = Topics(topic_prefix)
    summary = produce_files(
        [huge, FIXTURES / "social" / "export.jsonl"], kafka_bootstrap, topics, PiiHasher(pii_key)
    )
    assert summary.too_large == 1 and summary.failed == 0
    (letter,) = read_back(kafka_bootstrap, topics.dead_letters, count=1)
    headers = dict(letter.headers)
    assert headers["reason"].startswith(b"record of 2,000,0")
    assert headers["stage"] == b"produce" and b"jan@ziggo.nl" not in letter.value
    assert len(letter.value) <= 70_000
    social = topics.raw("social")
    assert (
        len(read_back(kafka_bootstrap, social, count=summary.by_topic[social]))
        == summary.by_topic[social]
        > 0
    )


def social(event_id: str, occurred_at: str) -> dict[str, str]:
    return {
        "schema": "journeys.social/v1",
        "id": event_id,
        "kind": "mention",
        "platform": "x",
        "handle": f"@{event_id}",
        "occurred_at": occurred_at,
    }


def test_records_in_event_time_interleave_the_files_and_keep_broken_records_in_place(
    tmp_path: Path, pii_key: str
) -> None:
    first, second = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    lines_a = [
        "not json at all",  # broken, nothing before it: first
        orjson.dumps(social("a2", "2024-03-05T10:00:00Z")),
        orjson.dumps(social("a3", "2024-03-05T12:00:00Z")),
        orjson.dumps({"schema": "journeys.social/v1", "id": "a4"}),  # broken: stays behind a3
    ]
    lines_b = [
        orjson.dumps(social("b1", "2024-03-05T11:00:00Z")),
        orjson.dumps(social("b2", "2024-03-05T12:00:00Z")),  # a3's time: after a.jsonl's records
        orjson.dumps(social("b3", "2024-03-05T09:00:00+01:00")),  # 08:00 UTC
        orjson.dumps([social("b4", "2024-03-05T13:00:00Z"), social("b5", "2024-03-05T07:00:00Z")]),
    ]
    for path, lines in ((first, lines_a), (second, lines_b)):
        path.write_bytes(b"\n".join(line if isinstance(line, bytes) else line.encode() for line in lines))

    ordered = records_in_event_time([first, second], IngestContext.with_key(pii_key))

    assert [record.origin for record in ordered] == [
        "a.jsonl:1",
        "b.jsonl:4",  # by its earliest event, 07:00
        "b.jsonl:3",
        "a.jsonl:2",
        "b.jsonl:1",
        "a.jsonl:3",
        "a.jsonl:4",
        "b.jsonl:2",
    ]
    assert Counter(ordered) == Counter([*read_records(first), *read_records(second)])
