"""The demo dataset generator: determinism, coverage of the story, planted pain points,
broken records and the accounting in truth.json, checked through the real ingest pipeline."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
import yaml

from ingest.context import IngestContext
from ingest.demo import (
    DROPOFF_TIMEOUT,
    FILES,
    MIN_DAYS,
    NURTURE_KEY,
    PAYMENT_KEY,
    PERSONAS,
    DemoFiles,
    generate,
)
from ingest.files import read_records
from ingest.pipeline import parse_records
from ingest.records import DeadLetter
from journeys.phases import PhaseRules
from journeys.reconstruct import Admission, Reconstruction
from journeys.touchpoint import Channel, Touchpoint

CUSTOMERS = 300
SEED = 7
KEY = b"k" * 32

# What the ingest pipeline says about each kind of deliberately broken record.
DEAD_LETTER_REASONS = {
    "malformed_json": "malformed JSON",
    "naive_timestamp": "timestamp must carry a time zone",
    "missing_identifiers": "no usable identifier",
    "junk_identifier_only": "anonymousId: placeholder value",
}


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> DemoFiles:
    return generate(customers=CUSTOMERS, seed=SEED).write(tmp_path_factory.mktemp("demo"))


@pytest.fixture(scope="module")
def truth(files: DemoFiles) -> dict[str, Any]:
    return json.loads(files.truth.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def parsed(files: DemoFiles) -> dict[str, list[Touchpoint | DeadLetter]]:
    """Every outcome of the real ingest pipeline, per file name."""
    ctx = IngestContext.with_key(KEY)
    return {name: list(parse_records(read_records(path), ctx)) for name, path in _inputs(files).items()}


@pytest.fixture(scope="module")
def touchpoints(parsed: dict[str, list[Touchpoint | DeadLetter]]) -> dict[str, Touchpoint]:
    """Stored touchpoints by event id (redeliveries collapse onto the first)."""
    out: dict[str, Touchpoint] = {}
    for outcomes in parsed.values():
        for outcome in outcomes:
            if isinstance(outcome, Touchpoint):
                out.setdefault(outcome.event_id, outcome)
    return out


@pytest.fixture(scope="module")
def default_rules() -> PhaseRules:
    text = (resources.files("infra") / "rules" / "default.yaml").read_text(encoding="utf-8")
    return PhaseRules.from_mapping(yaml.safe_load(text))


def _inputs(files: DemoFiles) -> dict[str, Path]:
    return {path.name: path for path in files.inputs()}


def _by_person(truth: dict[str, Any], touchpoints: dict[str, Touchpoint]) -> dict[str, list[Touchpoint]]:
    people: dict[str, list[Touchpoint]] = defaultdict(list)
    for event_id, tp in touchpoints.items():
        people[truth["events"][event_id]].append(tp)
    for tps in people.values():
        tps.sort(key=lambda tp: (tp.occurred_at, tp.event_id))
    return people


# ── determinism ─────────────────────────────────────────────────────────────


def _contents(files: DemoFiles) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in (*files.inputs(), files.truth)}


def test_same_seed_gives_byte_identical_files(tmp_path: Path) -> None:
    first = _contents(generate(customers=60, seed=3).write(tmp_path / "a"))
    second = _contents(generate(customers=60, seed=3).write(tmp_path / "b"))
    assert list(first) == [*FILES.values(), "truth.json"]
    assert first == second


def test_a_different_seed_gives_different_files(tmp_path: Path) -> None:
    first = _contents(generate(customers=60, seed=3).write(tmp_path / "a"))
    other = _contents(generate(customers=60, seed=4).write(tmp_path / "b"))
    for name in first:
        assert first[name] != other[name], name


def test_a_person_is_the_same_alone_and_in_the_stream() -> None:
    ds = generate(customers=40, seed=SEED)
    streamed = list(ds.iter_records())
    alone = ds.person(17)
    assert streamed[17].person_id == alone.person_id == "p0000017"
    assert [r.payload for r in streamed[17].records] == [r.payload for r in alone.records]


def test_the_write_leaves_no_spool_files(files: DemoFiles) -> None:
    assert sorted(p.name for p in files.directory.iterdir()) == sorted([*FILES.values(), "truth.json"])


# ── what the data contains ──────────────────────────────────────────────────


def test_all_four_channels_and_every_persona_are_present(
    truth: dict[str, Any], touchpoints: dict[str, Touchpoint]
) -> None:
    channels = Counter(tp.channel for tp in touchpoints.values())
    assert set(channels) == set(Channel)
    assert sorted(truth["counts"]["people_by_persona"]) == sorted(p.name for p in PERSONAS)
    assert sum(truth["counts"]["people_by_persona"].values()) == CUSTOMERS
    assert sorted(truth["counts"]["persons_by_kind"]) == ["anonymous", "identified", "social_only"]
    assert truth["counts"]["persons"] == len(truth["persons"]) == CUSTOMERS + truth["counts"]["fragments"]
    assert sorted(truth["counts"]["people_by_outcome"]) == [
        "converted",
        "dropped",
        "nurture_pain",
        "open",
        "payment_pain",
    ]


def test_anonymous_visitors_later_identify(truth: dict[str, Any], touchpoints: dict[str, Touchpoint]) -> None:
    """Some people browse with only an anonymous id and are identified later on that device."""
    found = 0
    for tps in _by_person(truth, touchpoints).values():
        anonymous_first: set[str] = set()
        for tp in tps:
            types = {i.type for i in tp.identifiers}
            anonymous = {i.value for i in tp.identifiers if i.type == "anonymous_id"}
            if types <= {"anonymous_id", "device_id"}:
                anonymous_first |= anonymous
            elif types & {"user_id", "email"} and anonymous & anonymous_first:
                found += 1
                break
    assert found >= CUSTOMERS // 4


def test_email_clicks_identify_a_new_browser(
    truth: dict[str, Any], touchpoints: dict[str, Touchpoint]
) -> None:
    """A nurture click opens a new browser whose only link to the person is the identify from the link."""
    found = 0
    for tps in _by_person(truth, touchpoints).values():
        clicks = [tp for tp in tps if tp.channel is Channel.EMAIL and tp.action == "click"]
        landed = [
            tp
            for tp in tps
            if tp.action == "Page Viewed" and "utm_campaign=spring-nurture" in str(tp.properties.get("url"))
        ]
        if clicks and landed:
            found += 1
    assert found > 0


def test_people_use_several_devices(truth: dict[str, Any], touchpoints: dict[str, Touchpoint]) -> None:
    devices_per_person = Counter()
    for person, tps in _by_person(truth, touchpoints).items():
        devices = {i.value for tp in tps for i in tp.identifiers if i.type == "anonymous_id"}
        devices_per_person[person] = len(devices)
    multi = sum(1 for n in devices_per_person.values() if n >= 2)
    assert multi >= CUSTOMERS // 10
    assert max(devices_per_person.values()) >= 3


def test_truth_events_cover_exactly_the_stored_touchpoints(
    truth: dict[str, Any], touchpoints: dict[str, Touchpoint]
) -> None:
    assert set(truth["events"]) == set(touchpoints)
    assert set(truth["events"].values()) == set(truth["persons"])
    twilio = {e for e, tp in touchpoints.items() if tp.source == "twilio"}
    assert set(truth["twilio_callbacks"]) == twilio


def test_no_silence_longer_than_the_timeout_inside_an_unconverted_story() -> None:
    """The truth gives each person one journey; a gap past the timeout would split it in two."""
    for person in generate(customers=CUSTOMERS, seed=SEED).iter_records():
        last = None
        for record in person.records:
            if record.conversion:
                break
            if record.active:
                if last is not None:
                    assert record.at_ms - last <= DROPOFF_TIMEOUT, person.person_id
                last = record.at_ms


# ── planted pain points ─────────────────────────────────────────────────────


def test_planted_pain_points_are_counted_in_truth(truth: dict[str, Any]) -> None:
    payment, nurture = truth["pain_points"]
    assert payment["name"] == "failing_payment_step"
    assert tuple(payment["dropoff_key"].values()) == PAYMENT_KEY
    assert nurture["name"] == "dead_end_nurture"
    assert tuple(nurture["dropoff_key"].values()) == NURTURE_KEY
    assert sum(payment["by_reason"].values()) == payment["journeys"]
    assert set(payment["by_reason"]) == {"card_declined", "3ds_timeout"}
    assert sum(nurture["by_series_length"].values()) == nurture["journeys"]
    assert set(nurture["by_series_length"]) <= {"3", "4"}
    # Nearly every person given the story drops off where it was planted.
    outcomes = truth["counts"]["people_by_outcome"]
    assert outcomes["payment_pain"] * 0.85 <= payment["journeys"] <= outcomes["payment_pain"]
    assert nurture["journeys"] == outcomes["nurture_pain"]
    planted = Counter(
        tuple(p["dropoff"])
        for p in truth["persons"].values()
        if "dropoff" in p and p.get("planned_dropoff") == p["dropoff"]
    )
    assert planted[PAYMENT_KEY] == payment["journeys"]
    assert planted[NURTURE_KEY] == nurture["journeys"]


def test_pain_points_are_the_top_expected_dropoffs(truth: dict[str, Any]) -> None:
    ranked = [(d["phase"], d["channel"], d["action"]) for d in truth["expected_dropoffs"]]
    assert set(ranked[:2]) == {PAYMENT_KEY, NURTURE_KEY}
    counts = [d["journeys"] for d in truth["expected_dropoffs"]]
    assert counts == sorted(counts, reverse=True)
    dropped = Counter(tuple(p["dropoff"]) for p in truth["persons"].values() if "dropoff" in p)
    assert {
        (d["phase"], d["channel"], d["action"]): d["journeys"] for d in truth["expected_dropoffs"]
    } == dropped


def test_payment_pain_story_in_the_raw_data(
    truth: dict[str, Any], touchpoints: dict[str, Touchpoint]
) -> None:
    """Payment Failed on the web, then an abandoned call in the payments queue, then nothing."""
    people = _by_person(truth, touchpoints)
    stories = 0
    for person, entry in truth["persons"].items():
        if entry.get("dropoff") != list(PAYMENT_KEY):
            continue
        tps = people[person]
        failed = [tp for tp in tps if tp.action == "Payment Failed"]
        calls = [tp for tp in tps if tp.source == "contact_centre"]
        assert failed and calls, person
        assert calls[-1].action == "call.abandoned"
        assert calls[-1].properties["queue"] == "payments"
        assert failed[0].occurred_at < calls[-1].occurred_at
        assert not any(tp.action == "Order Completed" for tp in tps)
        stories += 1
    assert stories == truth["pain_points"][0]["journeys"]


def test_reconstruction_recovers_stitching_and_dropoffs(
    truth: dict[str, Any], parsed: dict[str, list[Touchpoint | DeadLetter]], default_rules: PhaseRules
) -> None:
    """What `journeys demo` checks, on the pure core: B-cubed stitching and drop-off keys."""
    reconstruction = Reconstruction(default_rules)
    admissions = Counter(
        reconstruction.admit(o) for outcomes in parsed.values() for o in outcomes if isinstance(o, Touchpoint)
    )
    assert admissions == {
        Admission.NEW: truth["counts"]["stored"],
        Admission.DUPLICATE: truth["counts"]["duplicates"],
    }
    predicted = {
        step.touchpoint.event_id: customer
        for customer, steps in reconstruction.customers().items()
        for step in steps
    }
    actual = truth["events"]
    both = Counter((predicted[e], actual[e]) for e in predicted)
    cluster, person = Counter(predicted.values()), Counter(actual.values())
    precision = sum(both[(predicted[e], actual[e])] / cluster[predicted[e]] for e in predicted) / len(
        predicted
    )
    recall = sum(both[(predicted[e], actual[e])] / person[actual[e]] for e in predicted) / len(predicted)
    assert precision >= 0.99
    assert recall >= 0.99
    found = Counter(
        (j.dropoff_phase.value, j.dropoff_channel.value, j.dropoff_action)
        for j in reconstruction.journeys()
        if j.dropoff_phase is not None and j.dropoff_channel is not None
    )
    expected = {(d["phase"], d["channel"], d["action"]): d["journeys"] for d in truth["expected_dropoffs"]}
    assert dict(found) == expected


# ── broken records, duplicates and accounting ──────────────────────────────


def test_broken_records_dead_letter_with_their_documented_reasons(
    truth: dict[str, Any], parsed: dict[str, list[Touchpoint | DeadLetter]]
) -> None:
    dead = {name: [o for o in outcomes if isinstance(o, DeadLetter)] for name, outcomes in parsed.items()}
    broken = truth["broken_records"]
    assert Counter(b["file"] for b in broken) == Counter(
        {name: len(letters) for name, letters in dead.items() if letters}
    )
    assert Counter((b["file"], b["kind"]) for b in broken) == Counter(
        {
            ("web.jsonl", "malformed_json"): 1,
            ("web.jsonl", "naive_timestamp"): 1,
            ("web.jsonl", "missing_identifiers"): 1,
            ("web.jsonl", "junk_identifier_only"): 1,
            ("email.jsonl", "missing_identifiers"): 1,
            ("twilio.jsonl", "missing_identifiers"): 1,
            ("calls.csv", "missing_identifiers"): 1,
            ("social.jsonl", "naive_timestamp"): 1,
        }
    )
    for item in broken:
        letters = dead[item["file"]]
        if item["event_id"] is None:
            matching = [d for d in letters if b'"anonymousId"' in d.raw and not d.raw.endswith(b"}")]
        else:
            marker = item["event_id"].split(":", 1)[0].encode()
            matching = [d for d in letters if marker in d.raw]
        assert len(matching) == 1, item
        assert DEAD_LETTER_REASONS[item["kind"]] in matching[0].reason, (item, matching[0].reason)


def test_accounting_adds_up(
    files: DemoFiles, truth: dict[str, Any], parsed: dict[str, list[Touchpoint | DeadLetter]]
) -> None:
    counts = truth["counts"]
    assert counts["records_read"] == counts["stored"] + counts["duplicates"] + counts["dead_letters"]
    assert counts["dead_letters"] == len(truth["broken_records"])
    assert counts["duplicates"] == len(truth["duplicates"])
    seen: set[str] = set()
    for name, path in _inputs(files).items():
        outcomes = parsed[name]
        expected = counts["files"][name]
        stored = duplicates = 0
        for outcome in outcomes:
            if isinstance(outcome, Touchpoint):
                if outcome.event_id in seen:
                    duplicates += 1
                else:
                    seen.add(outcome.event_id)
                    stored += 1
        dead = sum(isinstance(o, DeadLetter) for o in outcomes)
        assert (stored, duplicates, dead, len(outcomes)) == (
            expected["stored"],
            expected["duplicates"],
            expected["dead_letters"],
            expected["records"],
        ), name
        lines = path.read_bytes().count(b"\n") - (1 if name == "calls.csv" else 0)
        assert lines == expected["lines"], name
    assert sum(f["records"] for f in counts["files"].values()) == counts["records_read"]
    assert counts["stored"] == len(truth["events"])


def test_duplicates_are_exact_redeliveries(
    truth: dict[str, Any], parsed: dict[str, list[Touchpoint | DeadLetter]]
) -> None:
    listed = Counter((d["file"], d["event_id"]) for d in truth["duplicates"])
    assert {name for name, _ in listed} == {"web.jsonl", "email.jsonl"} | (
        {"twilio.jsonl"} if truth["counts"]["files"]["twilio.jsonl"]["duplicates"] else set()
    )
    for name, outcomes in parsed.items():
        by_id: dict[str, list[Touchpoint]] = defaultdict(list)
        for outcome in outcomes:
            if isinstance(outcome, Touchpoint):
                by_id[outcome.event_id].append(outcome)
        repeated = {e: len(tps) - 1 for e, tps in by_id.items() if len(tps) > 1}
        assert repeated == {e: n for (f, e), n in listed.items() if f == name}, name
        for event_id in repeated:
            first, *again = by_id[event_id]
            for other in again:
                assert other.model_copy(update={"received_at": None}) == first.model_copy(
                    update={"received_at": None}
                )


def test_no_customers_still_writes_the_broken_records(tmp_path: Path) -> None:
    written = generate(customers=0).write(tmp_path)
    truth = json.loads(written.truth.read_text(encoding="utf-8"))
    assert truth["counts"]["records_read"] == truth["counts"]["dead_letters"] == 8
    assert truth["events"] == {}
    assert truth["persons"] == {}
    ctx = IngestContext.with_key(KEY)
    outcomes = [o for path in written.inputs() for o in parse_records(read_records(path), ctx)]
    assert len(outcomes) == 8
    assert all(isinstance(o, DeadLetter) for o in outcomes)


def test_start_and_days_shape_the_data(tmp_path: Path) -> None:
    start = datetime(2025, 3, 1, 12, 30, 15, 999, tzinfo=UTC)
    written = generate(customers=40, start=start, days=MIN_DAYS).write(tmp_path)
    truth = json.loads(written.truth.read_text(encoding="utf-8"))
    assert truth["generator"]["start"] == "2025-03-01T12:30:15Z"
    assert truth["generator"]["end"] == "2025-04-05T12:30:15Z"
    ctx = IngestContext.with_key(KEY)
    times = [
        o.occurred_at
        for path in written.inputs()
        for o in parse_records(read_records(path), ctx)
        if isinstance(o, Touchpoint)
    ]
    assert min(times) >= start.replace(microsecond=0)
    assert max(times) < datetime(2025, 4, 5, 12, 30, 15, tzinfo=UTC)


# ── population mixes ────────────────────────────────────────────────────────


def test_the_short_mix_makes_about_ten_events_per_person_and_still_adds_up(tmp_path: Path) -> None:
    people = 600
    written = generate(customers=people, seed=SEED, mix="short").write(tmp_path)
    truth = json.loads(written.truth.read_text(encoding="utf-8"))
    counts = truth["counts"]
    assert truth["generator"]["mix"] == "short"
    assert 8 <= counts["records_read"] / people <= 12
    assert counts["persons_by_kind"]["anonymous"] > counts["persons_by_kind"]["identified"] > 0
    assert counts["records_read"] == counts["stored"] + counts["dead_letters"] + counts["duplicates"]
    ctx = IngestContext.with_key(KEY)
    outcomes = [o for path in written.inputs() for o in parse_records(read_records(path), ctx)]
    assert len(outcomes) == counts["records_read"]
    assert sum(isinstance(o, DeadLetter) for o in outcomes) == counts["dead_letters"]


def test_the_default_mix_is_the_demo_mix(tmp_path: Path) -> None:
    default = generate(customers=40, seed=3).write(tmp_path / "a")
    demo = generate(customers=40, seed=3, mix="demo").write(tmp_path / "b")
    assert _contents(default) == _contents(demo)
    assert json.loads(default.truth.read_text(encoding="utf-8"))["generator"]["mix"] == "demo"


# ── argument validation ─────────────────────────────────────────────────────


def test_generate_rejects_an_unknown_mix() -> None:
    with pytest.raises(ValueError, match="unknown mix 'long'"):
        generate(mix="long")


def test_generate_rejects_a_negative_customer_count() -> None:
    with pytest.raises(ValueError, match="customers must not be negative"):
        generate(customers=-1)


def test_generate_rejects_too_few_days() -> None:
    with pytest.raises(ValueError, match=f"days must be at least {MIN_DAYS}"):
        generate(days=MIN_DAYS - 1)


def test_generate_rejects_a_naive_start() -> None:
    with pytest.raises(ValueError, match="start must carry a time zone"):
        generate(start=datetime(2026, 9, 1))


@pytest.mark.parametrize("customers", [1.5, "10", True])
def test_generate_rejects_a_customer_count_that_is_not_an_integer(customers: Any) -> None:
    with pytest.raises(TypeError, match="customers must be an integer"):
        generate(customers=customers)
