"""The ClickHouse sink against the real broker and chDB: retries while ClickHouse refuses, then commits."""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from kafka import KafkaConsumer, TopicPartition

from ingest.kafka import ensure_topics, make_producer
from ingest.topics import Topics
from journeys.fold import JourneyPolicy
from journeys.identity import IdentityPolicy
from journeys.live import BatchResult, LiveReconstruction
from journeys.reconstruct import Reconstruction
from journeys.touchpoint import Touchpoint
from processors.config import load_rules
from processors.sinks.clickhouse import rebuild_point_ids
from processors.storage import connect, migrate
from processors.stream.messages import PublishedJourneys, encode_touchpoint, snapshot_messages, state_messages
from processors.stream.metrics import Metrics
from processors.stream.sink import (
    SinkConfig,
    SinkProgress,
    _commit_offsets,
    _latest_snapshot,
    _Segment,
    batch_began,
    run_sink,
)

RULES = load_rules()
T0 = datetime(2026, 9, 1, tzinfo=UTC)


def visits(count: int) -> list[Touchpoint]:
    return [
        Touchpoint(
            event_id=f"v{n}",
            occurred_at=T0 + timedelta(minutes=n),
            channel="web",
            source="segment",
            action="Product Viewed",
            identifiers=[{"type": "anonymous_id", "value": f"visitor-{n % 4}"}],
        )
        for n in range(count)
    ]


def web_touchpoint(
    event_id: str, at: timedelta, action: str, properties: dict[str, Any] | None = None, **ids: str
) -> Touchpoint:
    """A Segment web touchpoint `at` after T0 with these identifiers (type=value)."""
    return Touchpoint(
        event_id=event_id,
        occurred_at=T0 + at,
        channel="web",
        source="segment",
        action=action,
        identifiers=[{"type": kind, "value": value} for kind, value in ids.items()],
        properties=properties or {},
    )


def visit_call_login() -> tuple[Touchpoint, Touchpoint, Touchpoint]:
    """A visitor browses; an hour later a call comes from an unknown phone; a login links the two."""

    def touchpoint(event_id: str, minutes: int, channel: str, action: str, **ids: str) -> Touchpoint:
        return Touchpoint(
            event_id=event_id,
            occurred_at=T0 + timedelta(minutes=minutes),
            channel=channel,
            source="twilio" if channel == "phone" else "segment",
            action=action,
            identifiers=[{"type": kind, "value": value} for kind, value in ids.items()],
        )

    return (
        touchpoint("visit-1", 0, "web", "Product Viewed", anonymous_id="anon-1", user_id="user-1"),
        touchpoint("call-1", 60, "phone", "call.completed", phone="phone-hash-1"),
        touchpoint("login-1", 120, "web", "Signed In", user_id="user-1", phone="phone-hash-1"),
    )


def sink_config(bootstrap: str, topics: Topics, topic_prefix: str, **overrides: Any) -> SinkConfig:
    """The sink against the test broker: its own group, no metrics port, quick group timeouts."""
    defaults: dict[str, Any] = {
        "group_id": f"{topic_prefix}-sink",
        "metrics_port": None,
        "max_seconds": 0.2,
        "idle_exit": 2.0,
        "session_timeout_ms": 6000,
        "heartbeat_interval_ms": 1000,
    }
    return SinkConfig(bootstrap=bootstrap, topics=topics, **{**defaults, **overrides})


def publish_folds(bootstrap: str, topic_prefix: str, folds: list[list[Touchpoint]]) -> tuple[Topics, int]:
    """The state messages a reconstruct stage publishes for these folds, on fresh topics; and their number."""
    topics = Topics(topic_prefix)
    ensure_topics(bootstrap, topics, partitions=1)
    live = LiveReconstruction(Reconstruction(RULES, IdentityPolicy(), JourneyPolicy()))
    producer = make_producer(bootstrap)
    sent = 0
    for batch in folds:
        raw = {tp.event_id: encode_touchpoint(tp) for tp in batch}
        result = live.admit_batch(batch)
        for key, value in state_messages(result, live.reconstruction, raw, datetime.now(UTC)):
            producer.send(topics.state, key=key, value=value)
            sent += 1
    producer.flush()
    producer.close()
    return topics, sent


def test_the_sink_holds_its_batch_while_clickhouse_refuses_and_commits_after_writing(
    kafka_bootstrap: str, topic_prefix: str, dsn: str
) -> None:
    topics, sent = publish_folds(kafka_bootstrap, topic_prefix, [visits(20)])

    client = connect(dsn)
    migrate(client)
    # ClickHouse refuses every write to journeys until the table is back.
    client.command("RENAME TABLE journey_versions TO journey_versions_away")
    metrics = Metrics()

    def bring_clickhouse_back() -> None:
        while metrics.get("journeys_sink_retries_total") < 2:
            time.sleep(0.05)
        client.command("RENAME TABLE journey_versions_away TO journey_versions")

    restored = threading.Thread(target=bring_clickhouse_back, daemon=True)
    restored.start()
    config = sink_config(kafka_bootstrap, topics, topic_prefix, idle_exit=3.0, retry_initial=0.2)
    summary = run_sink(lambda: client, config, metrics=metrics)
    restored.join(timeout=5)

    assert summary.retries >= 2
    assert client.query("SELECT count() FROM touchpoints").result_rows == [(20,)]
    assert client.query("SELECT count(), sum(touchpoint_count) FROM journeys").result_rows == [(4, 20)]
    # Offsets were committed only once the batch was written: nothing left for the group.
    consumer = KafkaConsumer(bootstrap_servers=kafka_bootstrap, group_id=config.group_id)
    partition = TopicPartition(topics.state, 0)
    assert consumer.committed(partition) == sent
    consumer.close()


def test_a_touchpoint_moved_by_a_merge_is_written_where_it_went_when_both_snapshots_share_a_batch(
    kafka_bootstrap: str, topic_prefix: str, dsn: str
) -> None:
    """A visitor browses; a call stands alone (its phone is unknown); a login links the phone to the visitor.

    The three snapshots (visitor, phone-only customer with the call, visitor with
    the call) reach the sink in one batch, while the
    message retiring the phone-only customer falls into the next one (a poll can end
    anywhere). All rows of a batch share one version, so the call must be written
    once, where it went last, not left for ReplacingMergeTree to pick by chance.
    """
    topics = Topics(topic_prefix)
    ensure_topics(kafka_bootstrap, topics, partitions=1)
    live = LiveReconstruction(Reconstruction(RULES, IdentityPolicy(), JourneyPolicy()))

    visit, call, login = visit_call_login()
    now = datetime.now(UTC)
    raw = {tp.event_id: encode_touchpoint(tp) for tp in (call, visit, login)}
    messages = list(state_messages(live.admit_batch([visit]), live.reconstruction, raw, now))
    (visitor,) = live.reconstruction.graph.customers()
    alone = live.admit_batch([call])
    messages += state_messages(alone, live.reconstruction, raw, now)
    (phone_only,) = set(alone.journeys) - {visitor}
    merged = live.admit_batch([login])
    assert merged.journeys[phone_only] == [], "the phone-only customer was absorbed"
    assert [j.touchpoint_count for j in merged.journeys[visitor]] == [3]
    # The batch's messages up to the visitor's snapshot; the phone-only customer's retirement apart.
    kept = {customer: journeys for customer, journeys in merged.journeys.items() if customer != phone_only}
    messages += state_messages(replace(merged, journeys=kept), live.reconstruction, raw, now)
    retired = list(state_messages(BatchResult(journeys={phone_only: []}), live.reconstruction, raw, now))

    client = connect(dsn)
    migrate(client)
    config = sink_config(kafka_bootstrap, topics, topic_prefix, max_seconds=2.0)
    producer = make_producer(kafka_bootstrap)
    for key, value in messages:
        producer.send(topics.state, key=key, value=value)
    producer.flush()
    assert run_sink(lambda: client, config).batches == 1

    rows = "SELECT customer_id FROM touchpoint_versions WHERE event_id = 'call-1'"
    assert client.query(rows).result_rows == [(visitor,)], "one row for the call, at its last placement"

    for key, value in retired:
        producer.send(topics.state, key=key, value=value)
    producer.flush()
    producer.close()
    run_sink(lambda: client, config)
    assert client.query("SELECT DISTINCT customer_id FROM touchpoints").result_rows == [(visitor,)]
    assert client.query("SELECT customer_id, touchpoint_count FROM journeys").result_rows == [(visitor, 3)]


def failover_story() -> tuple[list[tuple[bytes, bytes]], list[tuple[bytes, bytes]], LiveReconstruction]:
    """The reconstruct stage's owner publishes a visitor and a phone-only caller, admits the login that
    links them and dies before publishing it; its successor rebuilds from the event log.

    Returns the predecessor's state messages, the successor's snapshot and the successor.
    """
    visit, call, login = visit_call_login()
    raw = {tp.event_id: encode_touchpoint(tp) for tp in (visit, call, login)}
    now = datetime.now(UTC)
    predecessor = LiveReconstruction(Reconstruction(RULES, IdentityPolicy(), JourneyPolicy()))
    published = predecessor.admit_batch([visit, call])
    messages = list(state_messages(published, predecessor.reconstruction, raw, now))
    successor = LiveReconstruction(Reconstruction(RULES, IdentityPolicy(), JourneyPolicy()))
    successor.reconstruction.admit_all([visit, call, login])
    snapshot = list(snapshot_messages(successor.rebuild_result(), successor.reconstruction, raw, now))
    return messages, snapshot, successor


def test_a_rebuilt_stage_s_snapshot_retires_customers_its_predecessor_published(
    kafka_bootstrap: str, topic_prefix: str, dsn: str
) -> None:
    """The owner of the reconstruct stage publishes a visitor and a phone-only caller, admits the login
    that links them, and is killed before publishing that. Its successor rebuilds from the event log,
    where the caller was never a customer of its own: only the snapshot's end can retire it."""
    topics = Topics(topic_prefix)
    ensure_topics(kafka_bootstrap, topics, partitions=1)
    published, snapshot, successor = failover_story()
    messages = published + snapshot

    client = connect(dsn)
    migrate(client)
    producer = make_producer(kafka_bootstrap)
    for key, value in messages:
        producer.send(topics.state, key=key, value=value)
    producer.flush()
    producer.close()
    config = sink_config(kafka_bootstrap, topics, topic_prefix, max_messages=2)  # a snapshot over batches
    summary = run_sink(lambda: client, config)

    assert summary.batches > 1
    (customer,) = successor.reconstruction.graph.customers()
    assert client.query("SELECT customer_id, touchpoint_count FROM journeys").result_rows == [(customer, 3)]
    assert summary.journeys_deleted == 1, "the phone-only caller's journey"
    merges = client.query("SELECT absorbed_customer_id FROM identity_merges").result_rows
    assert len(merges) == 1


def test_a_sink_restarted_inside_a_snapshot_reads_it_again_from_its_beginning(
    kafka_bootstrap: str, topic_prefix: str, dsn: str
) -> None:
    """The sink stops after the snapshot's begin marker and part of it: it must not have committed past
    the begin, or its successor sees an end without a beginning and retires nothing."""
    topics = Topics(topic_prefix)
    ensure_topics(kafka_bootstrap, topics, partitions=1)
    published, snapshot, successor = failover_story()
    assert len(snapshot) > 3  # begin, state messages, end

    client = connect(dsn)
    migrate(client)
    config = sink_config(kafka_bootstrap, topics, topic_prefix, max_messages=2)
    for part in (published + snapshot[:2], snapshot[2:]):  # the first sink stops inside the snapshot
        producer = make_producer(kafka_bootstrap)
        for key, value in part:
            producer.send(topics.state, key=key, value=value)
        producer.flush()
        producer.close()
        summary = run_sink(lambda: client, config)

    assert summary.journeys_deleted == 1, "the phone-only caller's journey, retired by the second sink"
    (customer,) = successor.reconstruction.graph.customers()
    assert client.query("SELECT customer_id, touchpoint_count FROM journeys").result_rows == [(customer, 3)]


def customer_entries(messages: list[tuple[bytes, bytes]]) -> list[list[Any]]:
    """Every [customer id, journeys, touchpoints, kept, extended] entry of these state messages, in order."""
    entries = []
    for _, value in messages:
        message = orjson.loads(value)
        if message["kind"] == "customers":
            entries += message["customers"]
    return entries


def test_only_changed_journeys_are_published_and_the_sink_ends_where_full_messages_end(
    kafka_bootstrap: str, topic_prefix: str, dsn: str
) -> None:
    """A customer with an old journey and a current one: later batches change the current one, the
    watermark closes it, and an unlink takes it away; the old journey is sent once and then only kept.
    A late event then changes the old one. The same batches sent in full into another database must
    leave the same journeys and touchpoints."""

    touchpoint = web_touchpoint
    month = timedelta(days=30)
    first_journey = [
        touchpoint("a-1", timedelta(0), "Product Viewed", user_id="u-a"),
        touchpoint("a-2", timedelta(hours=1), "Product Viewed", user_id="u-a"),
        touchpoint("a-3", timedelta(hours=2), "Signed In", user_id="u-a", anonymous_id="anon-2"),
    ]
    batches: list[list[Touchpoint]] = [
        [*first_journey, touchpoint("a-4", month, "Product Viewed", anonymous_id="anon-2")],
        [touchpoint("a-5", month + timedelta(hours=1), "Product Viewed", anonymous_id="anon-2")],
        [touchpoint("b-1", 2 * month, "Product Viewed", user_id="u-b")],  # the watermark closes a's journey
        [touchpoint("a-0", -timedelta(minutes=5), "Product Viewed", user_id="u-a")],  # late, into the old one
    ]
    raw = {tp.event_id: encode_touchpoint(tp) for batch in batches for tp in batch}
    now = datetime.now(UTC)
    partial, full = Topics(topic_prefix), Topics(f"{topic_prefix}-full")
    messages: dict[Topics, list[tuple[bytes, bytes]]] = {partial: [], full: []}
    for topics, published in ((partial, PublishedJourneys()), (full, None)):
        live = LiveReconstruction(Reconstruction(RULES, IdentityPolicy(), JourneyPolicy()))
        for batch in batches:
            messages[topics] += state_messages(
                live.admit_batch(batch), live.reconstruction, raw, now, published
            )
        live.reconstruction.unlink(("anonymous_id", "anon-2"))  # a-4 and a-5 are no longer a's
        messages[topics] += state_messages(live.admit_batch([]), live.reconstruction, raw, now, published)

    customer_a = live.reconstruction.graph.customer_of(("user_id", "u-a"))
    sent = [
        ([values[0] for values in journeys], kept, extended, [values[0] for values in touchpoints])
        for customer, journeys, touchpoints, kept, extended in customer_entries(messages[partial])
        if customer == customer_a
    ]
    first, changed, closed, late, unlinked = sent
    (old, current), kept_at_first, grown_at_first, _ = first
    assert kept_at_first == grown_at_first == [], "both journeys are new: sent whole"
    assert changed == ([current], [old], [current], ["a-5"]), "the current journey grew: its new touchpoint"
    assert closed == ([current], [old], [current], []), "closed by the watermark: its row alone"
    (earlier,), kept_at_late, grown_at_late, touchpoints_at_late = late
    # The old journey now starts with the late event: a new journey id, sent whole.
    assert earlier != old and kept_at_late == [current] and grown_at_late == []
    assert touchpoints_at_late == ["a-0", "a-1", "a-2", "a-3"]
    assert unlinked == ([], [earlier], [], []), "the current journey went away with the unlinked visitor"
    journeys_sent = [len(entry[1]) for entry in customer_entries(messages[partial])]
    assert sum(journeys_sent) < sum(len(entry[1]) for entry in customer_entries(messages[full]))

    clients = {partial: connect(dsn), full: connect(dsn.replace("database=", "database=full_"))}
    producer = make_producer(kafka_bootstrap)
    for topics, client in clients.items():
        ensure_topics(kafka_bootstrap, topics, partitions=1)
        migrate(client)
        for key, value in messages[topics]:
            producer.send(topics.state, key=key, value=value)
    producer.flush()
    producer.close()
    # In full, one message at a time; only changes, all in one batch: a message keeping a journey
    # that an earlier message of the same batch changed must not lose that change.
    run_sink(lambda: clients[full], sink_config(kafka_bootstrap, full, full.prefix, max_messages=1))
    assert (
        run_sink(lambda: clients[partial], sink_config(kafka_bootstrap, partial, partial.prefix)).batches == 1
    )

    def stored(client: Any) -> dict[str, list[tuple]]:
        return {
            "journeys": client.query(
                "SELECT * EXCEPT (watermark) FROM journeys ORDER BY journey_id"
            ).result_rows,
            "touchpoints": client.query("SELECT * FROM touchpoints ORDER BY event_id").result_rows,
        }

    assert stored(clients[partial]) == stored(clients[full])
    journeys = (
        clients[partial].query("SELECT customer_id, touchpoint_count, status FROM journeys").result_rows
    )
    assert (customer_a, 4, "dropped") in journeys
    assert len(journeys) == 3, "a's old journey, the unlinked visitor's, b's"


def test_a_journey_sent_in_parts_is_mined_as_if_it_were_sent_whole(
    kafka_bootstrap: str, topic_prefix: str, dsn: str
) -> None:
    """A shopper's journey grows over four batches, revisiting a page it saw before, then a late page
    lands inside it, and the watermark drops it; a second shopper's journey grows once. With
    `PublishedJourneys` these journeys go out in part: only the touchpoints that are new or moved on.
    Written one message per batch (each part carried onto the stored rollup), all in one batch (the
    parts joined in the sink) or in two batches, the journeys, touchpoints and drop-off points must
    equal those of the same batches sent whole."""

    def view(event_id: str, at: timedelta, action: str, path: str, user: str) -> Touchpoint:
        return web_touchpoint(event_id, at, action, {"path": path}, user_id=user)

    hour = timedelta(hours=1)
    batches: list[list[Touchpoint]] = [
        [
            view("s-1", 0 * hour, "Products Searched", "/search", "u-s"),
            view("t-1", 0 * hour, "Product Viewed", "/p/1", "u-t"),
        ],
        [
            view("s-2", 1 * hour, "Product Viewed", "/p/7", "u-s"),
            view("t-2", 1 * hour, "Product Added", "/cart", "u-t"),
        ],
        [view("s-3", 2 * hour, "Product Viewed", "/p/7", "u-s")],  # the same point again
        [view("s-4", 3 * hour, "Checkout Started", "/checkout", "u-s")],
        [view("s-5", hour + hour / 2, "Product Viewed", "/p/9", "u-s")],  # inside: s-3 and s-4 move on
        [view("z-1", 60 * 24 * hour, "Product Viewed", "/p/1", "u-z")],  # the watermark drops both
    ]
    raw = {tp.event_id: encode_touchpoint(tp) for batch in batches for tp in batch}
    now = datetime.now(UTC)
    partial, full = Topics(topic_prefix), Topics(f"{topic_prefix}-full")
    messages: dict[Topics, list[tuple[bytes, bytes]]] = {partial: [], full: []}
    first_batch = 0  # how many of the partial messages the first batch made
    counted = PublishedJourneys()
    for topics, published in ((partial, counted), (full, None)):
        live = LiveReconstruction(Reconstruction(RULES, IdentityPolicy(), JourneyPolicy()))
        for batch in batches:
            result = live.admit_batch(batch)
            messages[topics] += state_messages(result, live.reconstruction, raw, now, published)
            if topics == partial and batch is batches[0]:
                first_batch = len(messages[partial])

    shopper = live.reconstruction.graph.customer_of(("user_id", "u-s"))
    sent = [
        (extended, [values[0] for values in touchpoints])
        for customer, _, touchpoints, _, extended in customer_entries(messages[partial])
        if customer == shopper
    ]
    (journey,) = {journey_id for extended, _ in sent for journey_id in extended}
    assert sent == [
        ([], ["s-1"]),
        ([journey], ["s-2"]),
        ([journey], ["s-3"]),
        ([journey], ["s-4"]),
        ([journey], ["s-5", "s-3", "s-4"]),  # the late one and the two it moved on
        ([journey], []),  # dropped: its row alone
    ]
    # The shopper's, the second shopper's and the last visitor's journeys new; 5 + 2 sent in part.
    assert counted.take_sent() == {"new": 3, "whole": 0, "partial": 7, "kept": 0, "touchpoint_rows": 10}
    assert counted.take_sent() == {}

    # Three sinks of the partial messages: all in one batch (the parts joined into whole journeys),
    # one message at a time (each part carried onto the stored rollup), and the first batch's
    # messages then the rest in one batch (the parts joined, then carried once).
    one_by_one, split = Topics(f"{topic_prefix}-one"), Topics(f"{topic_prefix}-split")
    messages[one_by_one] = messages[split] = messages[partial]
    databases = {partial: "", one_by_one: "one_", split: "split_", full: "full_"}
    clients = {
        topics: connect(dsn.replace("database=", f"database={name}")) for topics, name in databases.items()
    }

    def send(topics: Topics, part: list[tuple[bytes, bytes]]) -> None:
        producer = make_producer(kafka_bootstrap)
        for key, value in part:
            producer.send(topics.state, key=key, value=value)
        producer.flush()
        producer.close()

    def sink(topics: Topics, **overrides: Any) -> int:
        client = clients[topics]
        return run_sink(
            lambda: client, sink_config(kafka_bootstrap, topics, topics.prefix, **overrides)
        ).batches

    for topics, client in clients.items():
        ensure_topics(kafka_bootstrap, topics, partitions=1)
        migrate(client)
        send(topics, messages[topics][:first_batch] if topics == split else messages[topics])
    assert sink(partial) == 1
    sink(one_by_one, max_messages=1)
    sink(full, max_messages=1)
    sink(split)
    send(split, messages[split][first_batch:])
    assert sink(split) == 1

    def stored(client: Any) -> dict[str, list[tuple]]:
        dropoff = (
            "SELECT * EXCEPT (did_just_before) FROM dropoff_points ORDER BY phase, channel, action, detail"
        )
        return {
            "journeys": client.query(
                "SELECT * EXCEPT (watermark) FROM journeys ORDER BY journey_id"
            ).result_rows,
            "touchpoints": client.query("SELECT * FROM touchpoints ORDER BY event_id").result_rows,
            "dropoff_points": client.query(dropoff).result_rows,
        }

    expected = stored(clients[full])
    assert ("purchase", "web", "Checkout Started", "/checkout", 1, 1, 1.0) in expected["dropoff_points"]
    assert ("consideration", "web", "Product Added", "/cart", 1, 1, 1.0) in expected["dropoff_points"]
    assert stored(clients[partial]) == expected, "all in one batch"
    assert stored(clients[one_by_one]) == expected, "one message at a time"
    assert stored(clients[split]) == expected, "the first batch, then the rest in one"
    rebuild_point_ids(clients[one_by_one])  # touchpoints not sent again keep older versions
    assert stored(clients[one_by_one]) == expected, "the rollup rebuilt from the stored rows"


def test_a_segment_joins_a_journey_s_parts_and_keeps_it_in_part_only_onto_what_is_stored() -> None:
    """Parts of one journey in one segment: after a whole message, a part makes it whole with both
    messages' touchpoints (the stored rows are outdated); after a part, still a part onto what is
    stored; a later message keeping it takes it from the earlier one as it was."""

    def row(journey_id: str) -> list[Any]:
        return [journey_id, "c"]

    def touchpoint(event_id: str, journey_id: str) -> list[Any]:
        return [event_id, "c", journey_id]

    customers: dict[str, Any] = {}
    _latest_snapshot(
        customers, "c", [row("j1"), row("j2")], [touchpoint("a", "j1"), touchpoint("b", "j2")], [], ["j2"]
    )
    _latest_snapshot(
        customers,
        "c",
        [row("j1"), row("j2")],
        [touchpoint("c", "j1"), touchpoint("d", "j2")],
        [],
        ["j1", "j2"],
    )
    journeys, touchpoints, kept, grown = customers["c"]
    assert [values[0] for values in touchpoints] == ["a", "b", "c", "d"]
    assert (len(journeys), kept, grown) == (2, [], ["j2"]), "j1 was sent whole earlier: whole; j2 in part"

    _latest_snapshot(customers, "c", [row("j1")], [], ["j2"], ["j1"])
    journeys, touchpoints, kept, grown = customers["c"]
    assert [values[0] for values in journeys] == ["j2", "j1"] and kept == [] and grown == ["j2"]
    assert sorted(values[0] for values in touchpoints) == ["a", "b", "c", "d"]

    _latest_snapshot(customers, "c", [], [], [], [])
    assert customers["c"] == ([], [], [], []), "every journey gone"


def test_a_batch_waits_from_when_its_records_were_produced_while_the_sink_was_busy() -> None:
    """`max_seconds` bounds how long a record waits in the sink: one produced during the last write has
    waited since it was produced; one from before that write, since the write began; before any write,
    or with a producer clock ahead of ours, a batch waits from the poll."""

    def produced_at(*seconds: float | None) -> list[Any]:
        return [
            type("Record", (), {"timestamp": None if at is None else round(at * 1000)})() for at in seconds
        ]

    polled = 1_000.0
    assert batch_began(polled, produced_at(990.0), None) == polled, "no write yet"
    assert batch_began(polled, produced_at(999.6, 999.5), busy_since=999.2) == 999.5
    assert batch_began(polled, produced_at(995.0, 999.5), busy_since=999.2) == 999.2, "a backlog"
    assert batch_began(polled, produced_at(1_003.0), busy_since=999.2) == polled, "a clock ahead of ours"
    assert batch_began(polled, produced_at(None, -0.001), busy_since=999.2) == polled, "no timestamps"


def test_a_segment_s_identity_messages_are_written_as_one_as_if_one_by_one(chdb_path: Any) -> None:
    """Each identifier's last assignment wins; a merge or conflict ends as the last message left it,
    re-added in one message replaces, removed later deletes; the same rows as a write per message."""
    at = int(T0.timestamp() * 1000)

    def merge(event: str, survivor: str, absorbed: str) -> list[Any]:
        return [event, at, survivor, absorbed, "email", "h1", "anonymous_id", "a1"]

    def conflict(event: str, customers: list[str]) -> list[Any]:
        return [event, at, "too many customers", "phone", "p1", "email", "h2", customers]

    messages = [
        {
            "kind": "identity",
            "identities": [["email", "h1", "c1"], ["anonymous_id", "a1", "c1"], ["phone", "p1", "c3"]],
            "merges_added": [merge("e1", "c1", "c2"), merge("e2", "c1", "c4")],
            "conflicts_added": [conflict("e3", ["c1", "c3"])],
        },
        {
            "kind": "identity",
            "identities": [["email", "h1", "c5"]],
            "merges_removed": [merge("e1", "c1", "c2"), merge("e2", "c1", "c4")],
            "merges_added": [merge("e1", "c5", "c2")],  # same key (event, absorbed): replaced
            "conflicts_removed": [conflict("e3", ["c1", "c3"])],
        },
        {
            "kind": "identity",
            "identities": [["anonymous_id", "a1", "c5"]],
            "merges_added": [merge("e6", "c5", "c7")],
        },
    ]

    def stored(dsn: str) -> dict[str, list[tuple]]:
        client = connect(dsn)
        return {
            view: sorted(client.query(f"SELECT * FROM {view}").result_rows)
            for view in ("identities", "identity_merges", "identity_conflicts")
        }

    one_by_one, as_one = (f"chdb://{chdb_path}?database=identity_{name}" for name in ("each", "one"))
    for dsn in (one_by_one, as_one):
        migrate(connect(dsn))
    for message in messages:
        segment = _Segment()
        segment.add_identity(message)
        segment.write_identity(connect(one_by_one))
    segment = _Segment()
    for message in messages:
        segment.add_identity(message)
    segment.write_identity(connect(as_one))

    written = stored(as_one)
    assert written == stored(one_by_one)
    assert written["identities"] == [
        ("anonymous_id", "a1", "c5"),
        ("email", "h1", "c5"),
        ("phone", "p1", "c3"),
    ]
    merges = [(m[0], m[2], m[3]) for m in written["identity_merges"]]
    assert merges == [("e1", "c5", "c2"), ("e6", "c5", "c7")]
    assert written["identity_conflicts"] == []


def test_a_malformed_identity_message_changes_nothing() -> None:
    segment = _Segment()
    segment.add_identity({"kind": "identity", "identities": [["email", "h1", "c1"]]})
    try:
        segment.add_identity({"identities": [["email", "h1", "c2"]], "merges_added": [["e1", 0]]})
    except IndexError:
        pass
    else:
        raise AssertionError("a merge without its absorbed customer must be refused")
    assert list(segment.identities.values()) == [("email", "h1", "c1")] and segment.merges == {}


def test_a_batch_is_written_once_its_messages_reach_the_byte_bound(
    kafka_bootstrap: str, topic_prefix: str, dsn: str
) -> None:
    """A backlog must not pile up in memory until `max_messages`: bytes bound a batch too."""
    folds = [  # three folds of ten visits each: each fold's messages are a few KB
        [tp.model_copy(update={"event_id": f"{tp.event_id}-{n}"}) for tp in visits(10)] for n in range(3)
    ]
    topics, sent = publish_folds(kafka_bootstrap, topic_prefix, folds)
    client = connect(dsn)
    migrate(client)
    # Each message is over the bound on its own; the wait would otherwise gather all in one write.
    config = sink_config(kafka_bootstrap, topics, topic_prefix, max_bytes=1, max_seconds=5.0, idle_exit=7.0)

    summary = run_sink(lambda: client, config)

    assert summary.messages == sent and summary.batches == sent
    assert client.query("SELECT count() FROM touchpoints").result_rows == [(30,)]
    consumer = KafkaConsumer(bootstrap_servers=kafka_bootstrap, group_id=config.group_id)
    assert consumer.committed(TopicPartition(topics.state, 0)) == sent
    consumer.close()


def test_no_offset_is_committed_past_a_record_polled_but_not_yet_written(
    kafka_bootstrap: str, topic_prefix: str
) -> None:
    topics = Topics(topic_prefix)
    ensure_topics(kafka_bootstrap, topics, partitions=1)
    producer = make_producer(kafka_bootstrap)
    for n in range(5):
        producer.send(topics.state, key=b"k", value=orjson.dumps({"kind": "events", "events": [], "n": n}))
    producer.flush()
    producer.close()
    consumer = KafkaConsumer(bootstrap_servers=kafka_bootstrap, enable_auto_commit=False)
    partition = TopicPartition(topics.state, 0)
    consumer.assign([partition])
    consumer.seek_to_beginning(partition)
    records: list[Any] = []
    deadline = time.monotonic() + 10
    while len(records) < 5 and time.monotonic() < deadline:
        for polled in consumer.poll(timeout_ms=500).values():
            records += polled
    assert consumer.position(partition) == 5

    assert _commit_offsets(consumer, SinkProgress(), records[2:])[partition].offset == 2
    assert _commit_offsets(consumer, SinkProgress(), [])[partition].offset == 5
    consumer.close()
