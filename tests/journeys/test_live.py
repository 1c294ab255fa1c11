"""Incremental reconstruction: applying every batch's changes gives exactly the full fold."""

from __future__ import annotations

import dataclasses
import random
from datetime import UTC, datetime, timedelta
from importlib import resources

import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from journeys.fold import JourneyStatus
from journeys.live import LiveReconstruction
from journeys.phases import PhaseRules
from journeys.reconstruct import Reconstruction
from journeys.touchpoint import Touchpoint

RULES = PhaseRules.from_mapping(
    yaml.safe_load((resources.files("infra") / "rules" / "default.yaml").read_text(encoding="utf-8"))
)
T0 = datetime(2026, 9, 1, tzinfo=UTC)
ACTIONS = {
    "web": ["Page Viewed", "Product Viewed", "Checkout Started", "Payment Failed", "Order Completed"],
    "email": ["delivered", "open", "click", "bounce"],
    "phone": ["call.completed", "call.abandoned"],
    "social": ["social.mention", "social.direct_message"],
}
IDENTIFIERS = st.sampled_from(
    [("anonymous_id", f"a{i}") for i in range(8)]
    + [("user_id", f"u{i}") for i in range(3)]
    + [("email", f"h{i}") for i in range(3)]
    + [("phone", "p0")]
)


@st.composite
def touchpoints(draw: st.DrawFn) -> list[Touchpoint]:
    count = draw(st.integers(min_value=1, max_value=30))
    return [
        Touchpoint(
            event_id=f"e{n:02d}",
            # Up to 200 days: drop-off (14 d) and churn (90 d) deadlines are crossed by later batches.
            occurred_at=T0 + timedelta(hours=draw(st.integers(min_value=0, max_value=24 * 200))),
            channel=(channel := draw(st.sampled_from(sorted(ACTIONS)))),
            source="test",
            action=draw(st.sampled_from(ACTIONS[channel])),
            identifiers=[
                {"type": t, "value": v}
                for t, v in draw(st.lists(IDENTIFIERS, min_size=1, max_size=3, unique=True))
            ],
        )
        for n in range(count)
    ]


def downstream(live: LiveReconstruction, batches: list[list[Touchpoint]]) -> tuple[dict, dict, set, set]:
    """What a sink holds after applying every batch's report: journeys by customer, identities, logs."""
    journeys: dict[str, list] = {}
    identities: dict = {}
    merges: set = set()
    conflicts: set = set()
    for batch in batches:
        result = live.admit_batch(batch)
        for customer, current in result.journeys.items():
            if current:
                journeys[customer] = current
            else:
                journeys.pop(customer, None)
        identities.update(result.identities)
        merges |= set(result.merges_added)
        merges -= set(result.merges_removed)
        conflicts |= set(result.conflicts_added)
        conflicts -= set(result.conflicts_removed)
    return journeys, identities, merges, conflicts


def at_watermark(journeys: list, watermark: datetime) -> list:
    # A journey row records the watermark it was folded at; everything else must match.
    return [dataclasses.replace(j, watermark=watermark) for j in journeys]


@settings(max_examples=200, deadline=None)
@given(touchpoints(), st.randoms(use_true_random=False), st.integers(min_value=1, max_value=8))
def test_batches_applied_downstream_equal_the_full_fold(
    events: list[Touchpoint], rnd: random.Random, batch_size: int
) -> None:
    shuffled = list(events)
    rnd.shuffle(shuffled)
    shuffled += rnd.sample(events, k=min(3, len(events)))  # redeliveries
    batches = [shuffled[i : i + batch_size] for i in range(0, len(shuffled), batch_size)]
    live = LiveReconstruction(Reconstruction(RULES))
    journeys, identities, merges, conflicts = downstream(live, batches)

    full = Reconstruction(RULES)
    full.admit_all(events)
    watermark = full.watermark
    expected: dict[str, list] = {}
    for journey in full.journeys():
        expected.setdefault(journey.customer_id, []).append(journey)
    assert {c: at_watermark(j, watermark) for c, j in journeys.items()} == expected
    assert identities == full.graph.assignment()
    assert merges == set(full.graph.merges)
    assert conflicts == set(full.graph.conflicts)


@settings(max_examples=200, deadline=None)
@given(touchpoints(), st.randoms(use_true_random=False), st.integers(min_value=1, max_value=8))
def test_batches_in_event_time_order_equal_the_full_fold_after_every_batch(
    events: list[Touchpoint], rnd: random.Random, batch_size: int
) -> None:
    """The common stream: customers' folds are extended batch by batch (a few late events refold)."""
    arriving = sorted(events, key=lambda t: (t.occurred_at, t.event_id))
    for _ in range(rnd.randint(0, 2)):
        i, j = rnd.randrange(len(arriving)), rnd.randrange(len(arriving))
        arriving[i], arriving[j] = arriving[j], arriving[i]
    live = LiveReconstruction(Reconstruction(RULES))
    full = Reconstruction(RULES)
    journeys: dict[str, list] = {}
    for start in range(0, len(arriving), batch_size):
        batch = arriving[start : start + batch_size]
        for customer, current in live.admit_batch(batch).journeys.items():
            if current:
                journeys[customer] = current
            else:
                journeys.pop(customer, None)
        full.admit_all(batch)
        expected: dict[str, list] = {}
        for journey in full.journeys():
            expected.setdefault(journey.customer_id, []).append(journey)
        assert {c: at_watermark(j, full.watermark) for c, j in journeys.items()} == expected


def test_the_watermark_alone_drops_a_journey() -> None:
    live = LiveReconstruction(Reconstruction(RULES))

    def viewed(event_id: str, days: float, visitor: str) -> Touchpoint:
        return Touchpoint(
            event_id=event_id,
            occurred_at=T0 + timedelta(days=days),
            channel="web",
            source="test",
            action="Product Viewed",
            identifiers=[{"type": "anonymous_id", "value": visitor}],
        )

    first = live.admit_batch([viewed("e1", 0, "a1")])
    ((only,),) = first.journeys.values()
    assert only.status is JourneyStatus.OPEN
    # Another visitor, 20 days later: nothing of a1 arrives, yet a1's journey is now dropped.
    later = live.admit_batch([viewed("e2", 20, "a2")])
    statuses = {c: [j.status for j in js] for c, js in later.journeys.items()}
    assert sorted(statuses.values()) == [[JourneyStatus.DROPPED], [JourneyStatus.OPEN]]


def test_a_merge_reports_the_absorbed_customer_as_vanished() -> None:
    live = LiveReconstruction(Reconstruction(RULES))

    def seen(event_id: str, hours: int, *ids: tuple[str, str]) -> Touchpoint:
        return Touchpoint(
            event_id=event_id,
            occurred_at=T0 + timedelta(hours=hours),
            channel="web",
            source="test",
            action="Page Viewed",
            identifiers=[{"type": t, "value": v} for t, v in ids],
        )

    a = live.admit_batch([seen("e1", 0, ("anonymous_id", "laptop"))])
    b = live.admit_batch([seen("e2", 1, ("anonymous_id", "phone"))])
    (laptop,), (phone,) = a.journeys, b.journeys
    merged = live.admit_batch([seen("e3", 2, ("anonymous_id", "phone"), ("anonymous_id", "laptop"))])
    assert merged.journeys[phone] == []  # absorbed: its journeys must be deleted downstream
    assert [j.touchpoint_count for j in merged.journeys[laptop]] == [3]
    assert [(m.surviving_customer_id, m.absorbed_customer_id) for m in merged.merges_added] == [
        (laptop, phone)
    ]


def _visit(event_id: str, days: float, visitor: str, action: str = "Product Viewed") -> Touchpoint:
    return Touchpoint(
        event_id=event_id,
        occurred_at=T0 + timedelta(days=days),
        channel="web",
        source="test",
        action=action,
        identifiers=[{"type": "anonymous_id", "value": visitor}],
    )


def test_a_late_touchpoint_corrects_a_journey_already_published_as_dropped() -> None:
    """Behind the watermark: counted as late, placed in event-time order, the correction published."""
    live = LiveReconstruction(Reconstruction(RULES))
    live.admit_batch([_visit("e1", 0, "a1")])
    dropped = live.admit_batch([_visit("e2", 30, "a2")])  # a1 has been silent for 30 days
    a1 = next(c for c, js in dropped.journeys.items() if js[0].status is JourneyStatus.DROPPED)

    # The order a1 placed on day 3 arrives only now: weeks behind the watermark.
    corrected = live.admit_batch([_visit("e3", 3, "a1", action="Order Completed")])
    assert [tp.event_id for tp in corrected.late] == ["e3"]
    (journey,) = corrected.journeys[a1]
    assert journey.status is JourneyStatus.CONVERTED and journey.touchpoint_count == 2


def test_a_touchpoint_within_the_allowed_lateness_is_not_late_and_changes_no_decided_status() -> None:
    live = LiveReconstruction(Reconstruction(RULES))
    live.admit_batch([_visit("e1", 0, "a1")])
    live.admit_batch([_visit("e2", 30, "a2")])
    watermark = live.reconstruction.watermark
    assert watermark is not None
    # Between the watermark and the newest event: on time by the policy (one hour of lateness).
    on_time = T0 + timedelta(days=30) - timedelta(minutes=30)
    assert watermark < on_time
    result = live.admit_batch(
        [Touchpoint(**{**_visit("e3", 0, "a1").model_dump(), "event_id": "e3", "occurred_at": on_time})]
    )
    assert result.late == []
    a1_journeys = next(js for c, js in result.journeys.items() if any(j.touchpoint_count == 1 for j in js))
    # a1 comes back after its drop-off: its first journey stays dropped, a new one opens.
    assert [j.status for j in a1_journeys] == [JourneyStatus.DROPPED, JourneyStatus.OPEN]
