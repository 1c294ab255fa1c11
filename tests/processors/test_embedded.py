"""The embedded shell against a real chDB: accounting, idempotent re-runs, late links, unmerge."""

from __future__ import annotations

import gzip
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest

from ingest.pii import PiiHasher
from journeys.identity import customer_id_for
from processors.config import Settings
from processors.embedded import run, unlink_identifier
from processors.storage import connect

T0 = datetime(2026, 9, 1, 9, 0, tzinfo=UTC)


def at(hours: float) -> str:
    return (T0 + timedelta(hours=hours)).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def track(
    message_id: str,
    event: str,
    hours: float,
    *,
    anonymous_id: str | None = None,
    user_id: str | None = None,
    **properties: object,
) -> dict:
    """A Segment track call as analytics.js sends it."""
    call: dict = {
        "type": "track",
        "event": event,
        "messageId": message_id,
        "timestamp": at(hours),
        "properties": properties,
    }
    if anonymous_id:
        call["anonymousId"] = anonymous_id
    if user_id:
        call["userId"] = user_id
    return call


def identify(message_id: str, hours: float, anonymous_id: str, user_id: str, email: str) -> dict:
    return {
        "type": "identify",
        "messageId": message_id,
        "timestamp": at(hours),
        "anonymousId": anonymous_id,
        "userId": user_id,
        "traits": {"email": email},
    }


def write_jsonl(path: Path, calls: list) -> Path:
    path.write_bytes(b"".join(orjson.dumps(c) + b"\n" for c in calls))
    return path


def rows(dsn: str, query: str) -> list[tuple]:
    return connect(dsn).query(query).result_rows


# Day 0: an anonymous visitor browses on a laptop. Day 2: user u1 buys from a phone.
BROWSING = [
    track("m-1", "Products Searched", 0, anonymous_id="laptop-a", query="espresso"),
    track("m-2", "Product Viewed", 0.2, anonymous_id="laptop-a", product_id="espresso-mini"),
    track("m-3", "Checkout Started", 48, anonymous_id="phone-b", user_id="u1"),
    track(
        "m-4", "Order Completed", 48.1, anonymous_id="phone-b", user_id="u1", order_id="o-1", revenue=229.0
    ),
]
# Arrives later but happened on day 1: the laptop visitor logs in as u1.
LATE_LOGIN = [identify("m-5", 24, "laptop-a", "u1", "  Anna.deVries@Ziggo.NL ")]


@pytest.fixture
def settings(dsn: str) -> Settings:
    return Settings.load(dsn=dsn)


def test_run_accounts_for_every_record(tmp_path: Path, settings: Settings) -> None:
    broken = tmp_path / "web.jsonl"
    lines = [orjson.dumps(c) for c in BROWSING] + [b'{"type":"track","event":"Product Viewed"', b"[]"]
    lines.append(orjson.dumps(BROWSING[0]))  # an exact redelivery
    broken.write_bytes(b"\n".join(lines) + b"\n")

    summary = run([broken], settings)

    assert (summary.records_read, summary.touchpoints_new, summary.duplicates, summary.dead_letters) == (
        7,
        4,
        1,
        2,
    )
    assert summary.accounted
    letters = rows(settings.dsn, "SELECT origin, reason, raw FROM dead_letters ORDER BY origin")
    assert [origin for origin, _, _ in letters] == ["web.jsonl:5", "web.jsonl:6"]
    assert letters[0][1].startswith("malformed JSON")
    assert letters[0][2] == b'{"type":"track","event":"Product Viewed"'.decode()
    assert letters[1][1] == "empty JSON array: no records"
    stored = rows(settings.dsn, "SELECT records_read, touchpoints_new, duplicates, dead_letters FROM runs")
    assert stored == [(7, 4, 1, 2)]


def test_rerunning_the_same_input_changes_nothing(tmp_path: Path, settings: Settings) -> None:
    web = write_jsonl(tmp_path / "web.jsonl", BROWSING + LATE_LOGIN)
    run([web], settings)
    snapshot = (
        rows(settings.dsn, "SELECT * EXCEPT (version, written_at) FROM touchpoints ORDER BY event_id"),
        rows(settings.dsn, "SELECT * EXCEPT (version, written_at) FROM journeys ORDER BY journey_id"),
        rows(settings.dsn, "SELECT * FROM identity_merges ORDER BY event_id"),
    )

    again = run([web], settings)

    assert (again.touchpoints_new, again.duplicates, again.dead_letters, again.replayed) == (0, 5, 0, 5)
    assert (
        rows(settings.dsn, "SELECT * EXCEPT (version, written_at) FROM touchpoints ORDER BY event_id")
        == snapshot[0]
    )
    assert (
        rows(settings.dsn, "SELECT * EXCEPT (version, written_at) FROM journeys ORDER BY journey_id")
        == snapshot[1]
    )
    assert rows(settings.dsn, "SELECT * FROM identity_merges ORDER BY event_id") == snapshot[2]
    assert rows(settings.dsn, "SELECT count() FROM events FINAL") == [(5,)]


def test_a_refused_record_delivered_again_is_one_dead_letter(tmp_path: Path, settings: Settings) -> None:
    """A record the aggregate refuses (a different record under a used event id), delivered three times."""
    conflicting = [BROWSING[0], {**BROWSING[0], "event": "Order Completed"}]
    web = write_jsonl(tmp_path / "web.jsonl", conflicting)

    runs = [run([web], settings) for _ in range(3)]

    assert [(r.touchpoints_new, r.dead_letters) for r in runs] == [(1, 1), (0, 1), (0, 1)]
    (letter,) = rows(settings.dsn, "SELECT origin, reason FROM dead_letters")
    assert letter == (
        "event m-1",
        "event_id 'm-1' was already used by a different record; the first one is kept",
    )


def test_a_late_event_is_counted_and_corrects_the_stored_journey(tmp_path: Path, settings: Settings) -> None:
    """A run stores a journey as dropped; the next run brings its order, placed weeks earlier."""
    first = write_jsonl(
        tmp_path / "first.jsonl",
        [
            track("v1", "Product Viewed", 0, anonymous_id="a-1"),
            track("v2", "Product Viewed", 24 * 30, anonymous_id="a-2"),
        ],
    )
    assert run([first], settings).late_events == 0
    assert rows(
        settings.dsn, "SELECT status FROM journeys WHERE touchpoint_count = 1 ORDER BY started_at"
    ) == [
        ("dropped",),
        ("open",),
    ]
    late = write_jsonl(
        tmp_path / "late.jsonl",
        [
            track("v3", "Order Completed", 24 * 3, anonymous_id="a-1", revenue=49.0, currency="EUR"),
            track("v4", "Product Viewed", 24 * 30 - 0.5, anonymous_id="a-2"),  # within the allowed lateness
        ],
    )
    summary = run([late], settings)
    assert summary.late_events == 1
    assert rows(settings.dsn, "SELECT status, touchpoint_count FROM journeys ORDER BY started_at") == [
        ("converted", 2),
        ("open", 2),
    ]


def test_late_identity_link_rewrites_history(tmp_path: Path, settings: Settings) -> None:
    run([write_jsonl(tmp_path / "day2.jsonl", BROWSING)], settings)
    before = rows(settings.dsn, "SELECT journey_id, customer_id, status FROM journeys ORDER BY started_at")
    assert [c for _, c, _ in before] == [
        customer_id_for(("anonymous_id", "laptop-a")),
        customer_id_for(("anonymous_id", "phone-b")),
    ]

    summary = run([write_jsonl(tmp_path / "late.jsonl", LATE_LOGIN)], settings)

    laptop = customer_id_for(("anonymous_id", "laptop-a"))  # the oldest identifier's customer survives
    after = rows(settings.dsn, "SELECT customer_id, status, phases_reached, touchpoint_count FROM journeys")
    assert after == [(laptop, "converted", ["orientation", "consideration", "purchase"], 5)]
    assert summary.journeys_deleted == 1  # u1's own journey is gone, not left stale
    assert rows(settings.dsn, "SELECT DISTINCT customer_id FROM touchpoints") == [(laptop,)]
    # In event time u1 first appears at the login, joining the laptop's customer as a
    # newcomer: no merge of two existing customers happened, so none is logged.
    assert rows(settings.dsn, "SELECT count() FROM identity_merges") == [(0,)]
    # Same state as if everything had arrived in one go, in any order.
    fresh = Settings.load(dsn=settings.dsn.replace("?database=", "?database=fresh_"))
    run([write_jsonl(tmp_path / "all.jsonl", LATE_LOGIN + BROWSING[::-1])], fresh)
    query = "SELECT * EXCEPT (version, written_at) FROM journeys ORDER BY journey_id"
    assert rows(fresh.dsn, query) == rows(settings.dsn, query)


def test_merge_is_logged_with_the_event_that_caused_it(tmp_path: Path, settings: Settings) -> None:
    login_after_purchase = identify("m-6", 49, "laptop-a", "u1", "anna.devries@ziggo.nl")
    run([write_jsonl(tmp_path / "web.jsonl", [*BROWSING, login_after_purchase])], settings)
    merges = rows(
        settings.dsn,
        "SELECT event_id, survivor_customer_id, absorbed_customer_id, identifier_type, "
        "linked_type FROM identity_merges",
    )
    laptop, phone = (
        customer_id_for(("anonymous_id", "laptop-a")),
        customer_id_for(("anonymous_id", "phone-b")),
    )
    assert [m[:3] for m in merges] == [("m-6", laptop, phone)]
    assert rows(settings.dsn, "SELECT DISTINCT customer_id FROM touchpoints") == [(laptop,)]


def test_unlink_splits_customers_again(tmp_path: Path, settings: Settings) -> None:
    run([write_jsonl(tmp_path / "web.jsonl", BROWSING + LATE_LOGIN)], settings)
    assert rows(settings.dsn, "SELECT count() FROM journeys") == [(1,)]

    summary = unlink_identifier(settings, "anonymous_id", "laptop-a", reason="shared library computer")

    # The laptop keeps its journey (same customer, same first touchpoint); the rest becomes a new one.
    assert (summary.journeys_written, summary.journeys_deleted) == (2, 0)
    customers = rows(settings.dsn, "SELECT customer_id, touchpoint_count FROM journeys ORDER BY customer_id")
    assert sorted(customers) == sorted(
        [
            (customer_id_for(("anonymous_id", "laptop-a")), 2),
            (customer_id_for(("email", _hash("anna.devries@ziggo.nl"))), 3),
        ]
    )
    assert rows(settings.dsn, "SELECT count() FROM identity_merges") == [(0,)]
    # The unlink is part of the log: a later run replays it and keeps the split.
    run([write_jsonl(tmp_path / "more.jsonl", [track("m-9", "Product Viewed", 50, user_id="u1")])], settings)
    assert rows(settings.dsn, "SELECT count() FROM journeys") == [(2,)]


def test_unlink_of_an_unknown_identifier_is_an_error(settings: Settings) -> None:
    with pytest.raises(ValueError, match="nothing to unlink"):
        unlink_identifier(settings, "anonymous_id", "never-seen")


CALLS_CSV = (
    "call_id,started_at,ended_at,caller_number,queue,wait_seconds,outcome,ivr_path,csat,sentiment,customer_id,email\n"
    "CC-1,2024-03-07T09:12:00Z,2024-03-07T09:19:30Z,06 12345678,billing,35,answered,main > billing,4,,u1,\n"
    # A contact-centre outcome the format does not know: a dead letter holding a number and an address.
    "CC-2,2024-03-07T10:00:00Z,,06 12345678,billing,5,transferred,,,,,anna.devries@ziggo.nl\n"
)


def test_gzip_and_csv_inputs(tmp_path: Path, settings: Settings) -> None:
    web = tmp_path / "web.jsonl.gz"
    web.write_bytes(gzip.compress(b"".join(orjson.dumps(c) + b"\n" for c in BROWSING)))
    calls = tmp_path / "calls.csv"
    calls.write_text(CALLS_CSV)
    summary = run([web, calls], settings)
    assert (summary.records_read, summary.touchpoints_new, summary.dead_letters) == (6, 5, 1)
    # The call carries user_id u1, so it joins the buyer's journey.
    assert rows(
        settings.dsn, "SELECT uniqExact(customer_id) FROM touchpoints WHERE channel IN ('web', 'phone')"
    ) == [(2,)]
    assert rows(settings.dsn, "SELECT count() FROM touchpoints WHERE channel = 'phone'") == [(1,)]


def test_raw_pii_never_reaches_storage(tmp_path: Path, settings: Settings) -> None:
    # A broken identify (no timestamp) carrying an address and a phone number.
    broken = {**identify("m-9", 30, "laptop-a", "u1", "anna.devries@ziggo.nl"), "timestamp": "yesterday"}
    broken["traits"]["phone"] = "+31 6 12345678"
    calls = tmp_path / "calls.csv"
    calls.write_text(CALLS_CSV)
    summary = run([write_jsonl(tmp_path / "web.jsonl", [*BROWSING, *LATE_LOGIN, broken]), calls], settings)
    assert summary.dead_letters == 2
    client = connect(settings.dsn)
    for table in ("events", "touchpoint_versions", "identity_versions", "dead_letter_log", "runs"):
        dump = client.raw_query(f"SELECT * FROM {table}", fmt="JSONEachRow").lower()
        assert dump, table
        for raw_value in (b"anna.devries@ziggo.nl", b"612345678", b"6 12345678"):
            assert raw_value not in dump, (table, raw_value)
    assert rows(settings.dsn, "SELECT identifier_value FROM identities WHERE identifier_type = 'email'") == [
        (_hash("anna.devries@ziggo.nl"),)
    ]
    # Dead letters keep their shape, with the keyed hash in place of the address.
    letters = [raw for (raw,) in rows(settings.dsn, "SELECT raw FROM dead_letters ORDER BY origin")]
    assert any(f"<email:{_hash('anna.devries@ziggo.nl')}>" in str(raw) for raw in letters)


def test_missing_input_is_an_error(tmp_path: Path, settings: Settings) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        run([tmp_path / "nope.jsonl"], settings)


def _hash(email: str) -> str:
    # The conftest's autouse fixture put the test key in the environment.
    return PiiHasher.from_env().hash_email(email)


def test_a_directory_stands_for_its_input_files(tmp_path: Path, settings: Settings) -> None:
    (tmp_path / "in" / "2026-09").mkdir(parents=True)
    write_jsonl(tmp_path / "in" / "2026-09" / "web.jsonl", BROWSING)
    (tmp_path / "in" / "2026-09" / "web2.jsonl.gz").write_bytes(gzip.compress(orjson.dumps(LATE_LOGIN[0])))
    (tmp_path / "in" / "notes.md").write_text("not an input")
    summary = run([tmp_path / "in"], settings)
    assert (summary.records_read, summary.touchpoints_new) == (5, 5)
    assert [Path(p).name for p in summary.inputs] == ["web.jsonl", "web2.jsonl.gz"]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="holds no"):
        run([empty], settings)


def test_a_journey_of_only_passive_touchpoints_is_stored(tmp_path: Path, settings: Settings) -> None:
    # SendGrid "processed"/"delivered" are passive: sent to the customer, not done by them.
    sent = [
        {
            "email": "new.lead@ziggo.nl",
            "timestamp": 1788253200,
            "event": event,
            "sg_event_id": f"sg-{event}",
            "sg_message_id": "m-1",
        }
        for event in ("processed", "delivered")
    ]
    path = tmp_path / "sendgrid.json"
    path.write_bytes(orjson.dumps(sent))
    summary = run([path], settings)
    assert summary.touchpoints_new == 2
    assert rows(settings.dsn, "SELECT touchpoint_count, last_active_at FROM journeys") == [(2, None)]
