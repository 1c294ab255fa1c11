"""The journey fold: statuses against the watermark, phases, switches, emotion line."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from journeys.fold import (
    ClassifiedTouchpoint,
    CustomerFold,
    JourneyPolicy,
    JourneyStatus,
    fold_customer,
    fold_journey,
    journey_id_for,
    split_journeys,
)
from journeys.phases import Classification
from journeys.touchpoint import Channel, CompactTouchpoint, Phase, Touchpoint

T0 = datetime(2026, 9, 1, 9, 0, tzinfo=UTC)
POLICY = JourneyPolicy(
    dropoff_timeout=timedelta(days=14),
    churn_timeout=timedelta(days=90),
    allowed_lateness=timedelta(hours=1),
    failure_window=timedelta(days=2),
)


def step(
    n: int,
    minutes: float,
    channel: str = "web",
    action: str = "Page Viewed",
    phase: Phase | None = None,
    *,
    passive: bool = False,
    failure: bool = False,
    conversion: bool = False,
    sentiment: float | None = None,
    value: float | None = None,
) -> ClassifiedTouchpoint:
    tp = Touchpoint(
        event_id=f"e{n:03d}",
        occurred_at=T0 + timedelta(minutes=minutes),
        channel=Channel(channel),
        source="test",
        action=action,
        identifiers=[{"type": "user_id", "value": "u1"}],
        value=value,
    )
    cls = Classification(
        phase=phase,
        rule=phase.value if phase else None,
        failure=failure,
        failure_rule="f" if failure else None,
        passive=passive,
        sentiment=sentiment,
        conversion=conversion,
    )
    return ClassifiedTouchpoint(CompactTouchpoint.of(tp), cls)


DAY = 24 * 60


def at(days: float) -> datetime:
    return T0 + timedelta(days=days)


def test_watermark_decides_dropoff_not_the_wall_clock() -> None:
    steps = [
        step(1, 0, action="Products Searched", phase=Phase.ORIENTATION),
        step(2, 10, action="Product Viewed", phase=Phase.CONSIDERATION),
        step(3, 20, "email", "delivered", passive=True),
    ]
    # 13 days of silence: still open; 15 days: dropped at the last customer move.
    still_open = fold_journey("cus_1", steps, at(13), POLICY)
    assert still_open.status is JourneyStatus.OPEN
    assert still_open.dropoff_phase is None
    dropped = fold_journey("cus_1", steps, at(15), POLICY)
    assert dropped.status is JourneyStatus.DROPPED
    assert (dropped.dropoff_phase, dropped.dropoff_channel, dropped.dropoff_action) == (
        Phase.CONSIDERATION,
        Channel.WEB,
        "Product Viewed",
    )
    assert dropped.dropoff_event_id == "e002"
    # the passive email is in the journey but is not where the customer left
    assert dropped.touchpoint_count == 3 and dropped.active_touchpoint_count == 2
    assert dropped.ended_at == T0 + timedelta(minutes=20)


def test_statuses_after_conversion() -> None:
    bought = [
        step(1, 0, action="Product Viewed", phase=Phase.CONSIDERATION),
        step(2, 5, action="Order Completed", phase=Phase.PURCHASE, conversion=True, value=80.0),
    ]
    assert fold_journey("c", bought, at(30), POLICY).status is JourneyStatus.CONVERTED
    assert fold_journey("c", bought, at(91), POLICY).status is JourneyStatus.CHURNED
    loyal = [*bought, step(3, 10 * DAY, action="Product Reviewed", phase=Phase.RETENTION)]
    journey = fold_journey("c", loyal, at(20), POLICY)
    assert journey.status is JourneyStatus.RETAINED
    assert journey.converted_at == T0 + timedelta(minutes=5)
    assert journey.revenue == 80.0


def test_only_passive_touchpoints_is_unengaged() -> None:
    steps = [step(1, 0, "email", "delivered", passive=True)]
    journey = fold_journey("c", steps, at(60), POLICY)
    assert journey.status is JourneyStatus.UNENGAGED
    assert journey.phases_reached == ()


def test_skipped_phase_and_regression() -> None:
    steps = [
        step(1, 0, action="Products Searched", phase=Phase.ORIENTATION),
        step(2, 5, action="Checkout Started", phase=Phase.PURCHASE),
        step(3, 9, action="Product Viewed", phase=Phase.CONSIDERATION),
        step(4, 12, action="unclassified thing"),
    ]
    journey = fold_journey("c", steps, at(1), POLICY)
    assert journey.phases_reached == (Phase.ORIENTATION, Phase.PURCHASE, Phase.CONSIDERATION)
    assert journey.phase_reached_at == (T0, T0 + timedelta(minutes=5), T0 + timedelta(minutes=9))
    # consideration was reached only after purchase, so it is not "skipped", but it is a regression
    assert journey.skipped_phases == ()
    assert [(r.from_phase, r.to_phase) for r in journey.regressions] == [
        (Phase.PURCHASE, Phase.CONSIDERATION)
    ]
    # an unclassified touchpoint inherits the phase before it
    assert journey.touchpoints[-1].phase is Phase.CONSIDERATION

    straight_to_checkout = fold_journey("c", steps[:2], at(1), POLICY)
    assert straight_to_checkout.skipped_phases == (Phase.CONSIDERATION,)
    assert straight_to_checkout.regressions == ()


def test_channel_switch_after_failure() -> None:
    steps = [
        step(1, 0, action="Payment Info Entered", phase=Phase.PURCHASE),
        step(2, 1, action="Payment Failed", phase=Phase.PURCHASE, failure=True),
        step(3, 90, "phone", "call.abandoned", failure=True, sentiment=-0.8),
        step(4, 3 * DAY, "email", "open"),
        step(5, 3 * DAY + 5, "web", "Page Viewed"),
    ]
    journey = fold_journey("c", steps, at(4), POLICY)
    assert len(journey.channel_switches) == 3
    first, second, third = journey.channel_switches
    assert (first.from_channel, first.to_channel) == (Channel.WEB, Channel.PHONE)
    assert first.after_failure and first.failure_action == "Payment Failed"
    assert first.gap_seconds == 89 * 60
    assert first.phase is Phase.PURCHASE
    # 3 days after the abandoned call: outside the 2-day failure window
    assert (second.from_channel, second.to_channel, second.after_failure) == (
        Channel.PHONE,
        Channel.EMAIL,
        False,
    )
    assert third.after_failure is False and third.failure_action is None
    assert journey.failure_count == 2


def test_passive_touchpoints_are_not_switches() -> None:
    steps = [
        step(1, 0, action="Product Viewed", phase=Phase.CONSIDERATION),
        step(2, 5, "email", "delivered", passive=True),
        step(3, 10, "email", "bounce", passive=True, failure=True),
        step(4, 60, "phone", "call.answered"),
    ]
    journey = fold_journey("c", steps, at(1), POLICY)
    assert [(s.from_channel, s.to_channel) for s in journey.channel_switches] == [
        (Channel.WEB, Channel.PHONE)
    ]
    # the bounce came after the last customer move and within the window
    assert journey.channel_switches[0].after_failure
    assert journey.channel_switches[0].failure_action == "bounce"
    assert journey.channel_counts == {Channel.WEB: 1, Channel.EMAIL: 2, Channel.PHONE: 1, Channel.SOCIAL: 0}


def test_emotion_line_peak_and_end() -> None:
    steps = [
        step(1, 0, sentiment=0.3),
        step(2, 1),
        step(3, 2, sentiment=-0.9),
        step(4, 3, sentiment=0.9),
        step(5, 4, sentiment=0.5),
    ]
    emotion = fold_journey("c", steps, at(1), POLICY).emotion
    assert [p[2] for p in emotion.points] == [0.3, -0.9, 0.9, 0.5]
    assert emotion.peak == -0.9  # most extreme; the earlier of equal extremes
    assert (emotion.low, emotion.high, emotion.end) == (-0.9, 0.9, 0.5)
    assert emotion.mean == pytest.approx(0.2)
    assert fold_journey("c", [step(1, 0)], at(1), POLICY).emotion.peak is None


def test_customer_splits_into_journeys_after_silence() -> None:
    steps = [
        step(1, 0, action="Product Viewed", phase=Phase.CONSIDERATION),
        step(2, 20 * DAY, action="Products Searched", phase=Phase.ORIENTATION),  # came back after dropping
        step(3, 20 * DAY + 5, action="Order Completed", phase=Phase.PURCHASE, conversion=True),
        step(4, 80 * DAY, action="Signed In", phase=Phase.USAGE),  # 60 days after buying: same journey
        step(5, 200 * DAY, action="Products Searched", phase=Phase.ORIENTATION),  # 120 days: new journey
    ]
    assert [len(j) for j in split_journeys(steps, POLICY)] == [1, 3, 1]
    journeys = fold_customer("cus_x", list(reversed(steps)), at(201), POLICY)
    assert [j.status for j in journeys] == [JourneyStatus.DROPPED, JourneyStatus.CHURNED, JourneyStatus.OPEN]
    assert journeys[0].journey_id == journey_id_for("cus_x", "e001")
    assert len({j.journey_id for j in journeys}) == 3


def test_passive_touchpoints_do_not_start_or_split_journeys() -> None:
    steps = [
        step(1, 0, action="Product Viewed", phase=Phase.CONSIDERATION),
        step(2, 30 * DAY, "email", "delivered", passive=True),
    ]
    assert [len(j) for j in split_journeys(steps, POLICY)] == [2]


def test_fold_is_independent_of_input_order() -> None:
    steps = [
        step(1, 0, action="Products Searched", phase=Phase.ORIENTATION, sentiment=0.1),
        step(2, 3, "phone", "call.answered", sentiment=-0.2),
        step(
            3, 3, "web", "Order Completed", phase=Phase.PURCHASE, conversion=True
        ),  # same instant: event_id breaks the tie
        step(4, 9, "social", "social.mention", sentiment=0.7),
    ]
    forward = fold_customer("c", steps, at(1), POLICY)
    backward = fold_customer("c", steps[::-1], at(1), POLICY)
    assert forward == backward
    assert [t.event_id for t in forward[0].touchpoints] == ["e001", "e002", "e003", "e004"]


def test_late_touchpoint_is_placed_in_order_and_recomputes() -> None:
    early = [
        step(1, 0, action="Products Searched", phase=Phase.ORIENTATION),
        step(3, 10, action="Order Completed", phase=Phase.PURCHASE, conversion=True),
    ]
    late = step(2, 5, "phone", "call.answered", phase=Phase.CONSIDERATION)
    before = fold_customer("c", early, at(1), POLICY)[0]
    after = fold_customer("c", [*early, late], at(1), POLICY)[0]
    assert before.journey_id == after.journey_id
    assert before.skipped_phases == (Phase.CONSIDERATION,)
    assert after.skipped_phases == ()
    assert [t.event_id for t in after.touchpoints] == ["e001", "e002", "e003"]
    assert len(after.channel_switches) == 2


def test_empty_journey_is_an_error() -> None:
    with pytest.raises(ValueError, match="at least one touchpoint"):
        fold_journey("c", [], at(1), POLICY)


def test_path_collapses_consecutive_repeats_of_customer_moves() -> None:
    steps = [
        step(1, 0, action="Page Viewed", phase=Phase.ORIENTATION),
        step(2, 1, action="Page Viewed"),  # inherits orientation: the same step again, collapsed
        step(3, 2, "email", "delivered", passive=True),  # not a customer move
        step(4, 3, action="Product Viewed", phase=Phase.CONSIDERATION),
        step(5, 4, action="Page Viewed", phase=Phase.ORIENTATION),
        step(6, 5, action="Page Viewed"),
    ]
    journey = fold_journey("c", steps, at(1), POLICY)
    assert journey.path == (
        "orientation:web:Page Viewed",
        "consideration:web:Product Viewed",
        "orientation:web:Page Viewed",
    )
    assert journey.loops == 1
    passive_only = fold_journey("c", [step(1, 0, "email", "delivered", passive=True)], at(1), POLICY)
    assert passive_only.path == () and passive_only.moments == ()


def test_moments_are_the_distinct_moves_before_the_first_conversion() -> None:
    steps = [
        step(1, 0, action="Product Viewed", phase=Phase.CONSIDERATION),
        step(2, 1, "email", "delivered", passive=True),  # organisation-initiated: never a moment
        step(3, 2, "phone", "call.completed"),
        step(4, 3, action="Product Viewed"),
        step(5, 5, "web", "Checkout Started", phase=Phase.PURCHASE),  # same instant as the conversion
        step(6, 5, action="Order Completed", phase=Phase.PURCHASE, conversion=True),
        step(7, 9, "social", "social.mention"),  # after the purchase: cannot have decided it
    ]
    journey = fold_journey("c", steps, at(1), POLICY)
    assert journey.moments == ((Channel.WEB, "Product Viewed"), (Channel.PHONE, "call.completed"))
    never_bought = fold_journey("c", [steps[0], steps[2], steps[6]], at(1), POLICY)
    assert never_bought.moments == (
        (Channel.WEB, "Product Viewed"),
        (Channel.PHONE, "call.completed"),
        (Channel.SOCIAL, "social.mention"),
    )


# (channel, action, phase, passive, failure, conversion): the kinds of touchpoint that move the cut
# (passive ones never start a journey; a conversion lengthens the silence that ends one).
KINDS = [
    ("web", "Products Searched", Phase.ORIENTATION, False, False, False),
    ("web", "Product Viewed", Phase.CONSIDERATION, False, False, False),
    ("web", "Payment Failed", Phase.PURCHASE, False, True, False),
    ("web", "Order Completed", Phase.PURCHASE, False, False, True),
    ("web", "Signed In", Phase.USAGE, False, False, False),
    ("phone", "call.abandoned", None, False, True, False),
    ("email", "delivered", None, True, False, False),
    ("social", "social.mention", Phase.RETENTION, False, False, False),
]


@st.composite
def histories(draw: st.DrawFn) -> list[ClassifiedTouchpoint]:
    """One customer's touchpoints over 400 days: gaps past the drop-off and churn timeouts happen."""
    history = []
    for n in range(draw(st.integers(min_value=1, max_value=25))):
        channel, action, phase, passive, failure, conversion = draw(st.sampled_from(KINDS))
        made = step(
            n,
            draw(st.integers(min_value=0, max_value=400 * DAY)),
            channel,
            action,
            phase,
            passive=passive,
            failure=failure,
            conversion=conversion,
            sentiment=draw(st.none() | st.sampled_from([-0.5, 0.0, 0.8])),
            value=draw(st.none() | st.just(30.0)) if conversion else None,
        )
        persona = draw(st.none() | st.sampled_from(["student", "family"]))
        history.append(made._replace(touchpoint=made.touchpoint._replace(persona=persona)))
    return history


def refold(customer_id: str, steps: list[ClassifiedTouchpoint], watermark: datetime) -> list:
    """The journeys by the cut and the per-journey fold on their own (what CustomerFold must equal)."""
    ordered = sorted(steps, key=lambda s: s.order_key)
    persona = None
    for s in ordered:
        persona = s.touchpoint.persona or persona
    return [
        fold_journey(customer_id, part, watermark, POLICY, persona)
        for part in split_journeys(ordered, POLICY)
    ]


@settings(max_examples=400, deadline=None)
@given(history=histories(), data=st.data())
def test_a_customer_fold_extended_batch_by_batch_equals_folding_the_whole_history(
    history: list[ClassifiedTouchpoint], data: st.DataObject
) -> None:
    # Arrival in event-time order with some touchpoints swapped (late), in batches of any size.
    arrival = sorted(history, key=lambda s: s.order_key)
    for _ in range(data.draw(st.integers(min_value=0, max_value=4))):
        i = data.draw(st.integers(min_value=0, max_value=len(arrival) - 1))
        j = data.draw(st.integers(min_value=0, max_value=len(arrival) - 1))
        arrival[i], arrival[j] = arrival[j], arrival[i]
    fold, seen = CustomerFold("c", POLICY), []
    while len(seen) < len(arrival):
        batch = arrival[len(seen) : len(seen) + data.draw(st.integers(min_value=1, max_value=6))]
        seen += batch
        fold.extend(batch)
        newest = max(s.touchpoint.occurred_at for s in seen)
        watermark = newest + timedelta(days=data.draw(st.sampled_from([-1, 0, 15, 100])))
        assert fold.journeys(watermark) == refold("c", seen, watermark)


def test_a_late_touchpoint_rewinds_only_the_journeys_from_the_one_it_falls_into() -> None:
    fold = CustomerFold("c", POLICY)
    fold.extend(
        [
            step(1, 0, action="Product Viewed", phase=Phase.CONSIDERATION),
            step(2, 20 * DAY, action="Products Searched"),  # a new journey after 20 silent days
            step(4, 40 * DAY, action="Products Searched"),  # and another
        ]
    )
    first, second, third = fold.folds
    late = step(3, 30 * DAY, action="Product Viewed")  # fills the gap: the 2nd and 3rd become one
    fold.extend([late])
    assert fold.folds[0] is first and fold.folds[1] is not second
    assert [len(f.steps) for f in fold.folds] == [1, 3]
    everything = [*first.steps, *second.steps, late, *third.steps]
    assert fold.journeys(at(41)) == refold("c", everything, at(41))
