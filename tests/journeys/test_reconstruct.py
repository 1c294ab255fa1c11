"""The reconstruction aggregate: results depend on the set of events, never on arrival order or redelivery."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from importlib import resources

import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from journeys.phases import PhaseRules
from journeys.reconstruct import Admission, Reconstruction
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
# Small pools so that random touchpoints share identifiers: chains, fan-in and conflicts happen.
IDENTIFIERS = st.sampled_from(
    [("anonymous_id", f"a{i}") for i in range(6)]
    + [("user_id", f"u{i}") for i in range(3)]
    + [("email", f"h{i}") for i in range(3)]
    + [("phone", "p0"), ("anonymous_id", "undefined")]
)


@st.composite
def touchpoints(draw: st.DrawFn) -> list[Touchpoint]:
    count = draw(st.integers(min_value=1, max_value=25))
    result = []
    for n in range(count):
        channel = draw(st.sampled_from(sorted(ACTIONS)))
        identifiers = draw(st.lists(IDENTIFIERS, min_size=1, max_size=3, unique=True))
        result.append(
            Touchpoint(
                event_id=f"e{n:02d}",
                occurred_at=T0 + timedelta(hours=draw(st.integers(min_value=0, max_value=24 * 40))),
                channel=channel,
                source="test",
                action=draw(st.sampled_from(ACTIONS[channel])),
                identifiers=[{"type": t, "value": v} for t, v in identifiers],
                sentiment=draw(st.none() | st.sampled_from([-0.8, -0.2, 0.0, 0.5, 0.9])),
            )
        )
    return result


def reconstruct(events: list[Touchpoint]) -> tuple[list, dict, tuple, tuple]:
    aggregate = Reconstruction(RULES)
    aggregate.admit_all(events)
    return (
        list(aggregate.journeys()),
        aggregate.graph.assignment(),
        aggregate.graph.merges,
        aggregate.graph.conflicts,
    )


@settings(max_examples=150, deadline=None)
@given(events=touchpoints(), seed=st.integers(min_value=0, max_value=2**32 - 1))
def test_arrival_order_and_redelivery_do_not_change_the_result(events: list[Touchpoint], seed: int) -> None:
    rng = random.Random(seed)
    shuffled = events[:]
    rng.shuffle(shuffled)
    redelivered = shuffled + rng.sample(events, k=rng.randint(0, len(events)))
    rng.shuffle(redelivered)
    assert reconstruct(redelivered) == reconstruct(sorted(events, key=lambda t: (t.occurred_at, t.event_id)))


@settings(max_examples=60, deadline=None)
@given(events=touchpoints())
def test_every_journey_touchpoint_belongs_to_exactly_one_journey(events: list[Touchpoint]) -> None:
    aggregate = Reconstruction(RULES)
    counts = aggregate.admit_all(events)
    placed = [p.event_id for journey in aggregate.journeys() for p in journey.touchpoints]
    assert len(placed) == len(set(placed)) == counts[Admission.NEW]


def test_duplicate_and_conflicting_event_ids_are_told_apart() -> None:
    first = Touchpoint(
        event_id="e1",
        occurred_at=T0,
        channel="web",
        source="segment",
        action="Page Viewed",
        identifiers=[{"type": "anonymous_id", "value": "a1"}],
    )
    aggregate = Reconstruction(RULES)
    assert aggregate.admit(first) is Admission.NEW
    assert (
        aggregate.admit(first.model_copy(update={"received_at": T0 + timedelta(hours=1)}))
        is Admission.DUPLICATE
    )
    assert aggregate.admit(first.model_copy(update={"action": "Product Viewed"})) is Admission.CONFLICT
    assert len(aggregate) == 1


def test_a_touchpoint_with_only_junk_identifiers_is_refused() -> None:
    junk = Touchpoint(
        event_id="e9",
        occurred_at=T0,
        channel="web",
        source="segment",
        action="Page Viewed",
        identifiers=[{"type": "anonymous_id", "value": "undefined"}],
    )
    aggregate = Reconstruction(RULES)
    assert aggregate.admit(junk) is Admission.UNIDENTIFIED
    assert len(aggregate) == 0
    assert list(aggregate.journeys()) == []


@settings(max_examples=150, deadline=None)
@given(events=touchpoints(), seed=st.integers(0, 1000))
def test_each_customer_gets_exactly_its_touchpoints_in_admission_order(
    events: list[Touchpoint], seed: int
) -> None:
    """The grouping the state is written from, against the plain one: each admitted touchpoint under
    the customer of its identifiers as the graph stands at the end, in admission order; customers
    in first-seen order (`customers`) and in id order (`customer_steps`)."""
    random.Random(seed).shuffle(events)
    aggregate = Reconstruction(RULES)
    admitted = [event for event in events if aggregate.admit(event) is Admission.NEW]
    expected: dict[str, list[str]] = {}
    for event in admitted:
        customer = aggregate.graph.customer_for(event.identifier_keys())
        expected.setdefault(customer, []).append(event.event_id)
    grouped = {
        customer: [s.touchpoint.event_id for s in steps] for customer, steps in aggregate.customers().items()
    }
    assert list(grouped.items()) == list(expected.items())
    stepped = [
        (customer, [s.touchpoint.event_id for s in steps]) for customer, steps in aggregate.customer_steps()
    ]
    assert stepped == sorted(expected.items())
