"""The journey fold: one customer's classified touchpoints → journeys.

Pure and deterministic. A journey's state is a fold over its touchpoints in
event-time order (`occurred_at`, then `event_id` for ties), so a late touchpoint
is simply placed in order and the journey recomputed, and replaying the log
gives the same journeys as live processing did.

Time is event time throughout. Whether a journey has been left is decided
against a *watermark* (the latest event time seen minus the allowed lateness),
never against the wall clock.

Vocabulary:
- an *active* touchpoint is a customer move; a *passive* one is organisation
  initiated (an email delivered, an outbound call) and never counts as the
  customer doing something;
- a *conversion* is a touchpoint that completes a purchase (`Order Completed`);
- a *failure signal* is a touchpoint where something went wrong for the
  customer (a bounce, a declined payment, an abandoned call, an error page);
- a *step* is a customer move named `phase:channel:action`; the journey's
  *path* is its steps with consecutive repeats collapsed;
- a *moment of truth* candidate is a touchpoint type (channel, action) the
  customer did before the first conversion: what can have decided it.

The path and the moments are rollups of the touchpoints kept on the journey
row, so the mining views read one row per journey instead of every touchpoint.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from operator import attrgetter
from typing import NamedTuple

from journeys.phases import Classification, PhaseRules
from journeys.touchpoint import (
    PHASE_ORDER,
    Channel,
    CompactTouchpoint,
    Phase,
    Touchpoint,
    TouchpointFields,
    compact_touchpoint,
)


class JourneyStatus(StrEnum):
    """Where a journey stands at the watermark.

    - `open`: no conversion yet, and the customer's last move is within the drop-off timeout;
    - `dropped`: no conversion, and no customer move for longer than the drop-off timeout —
      the journey is dropped at its last active touchpoint;
    - `converted`: a conversion happened and the customer is still active (within the churn timeout);
    - `retained`: converted and later reached the retention phase, still active;
    - `churned`: converted, but no customer move for longer than the churn timeout;
    - `unengaged`: only organisation-initiated touchpoints (e.g. emails delivered, never opened).
    """

    OPEN = "open"
    DROPPED = "dropped"
    CONVERTED = "converted"
    RETAINED = "retained"
    CHURNED = "churned"
    UNENGAGED = "unengaged"


@dataclass(frozen=True, slots=True)
class JourneyPolicy:
    """Timeouts that turn silence into drop-off, all in event time.

    `dropoff_timeout` also separates journeys: a customer who returns after
    dropping starts a new journey; after a conversion, only a gap longer than
    `churn_timeout` does. `allowed_lateness` is how far behind the newest event
    a touchpoint may arrive and still be placed without the journey having
    been declared dropped in between. `failure_window` bounds how long after a
    failure signal a channel switch still counts as caused by it.
    """

    dropoff_timeout: timedelta = timedelta(days=14)
    churn_timeout: timedelta = timedelta(days=90)
    allowed_lateness: timedelta = timedelta(hours=1)
    failure_window: timedelta = timedelta(days=2)

    def watermark(self, latest_event_time: datetime) -> datetime:
        return latest_event_time - self.allowed_lateness


class ClassifiedTouchpoint(NamedTuple):
    """A touchpoint (compact) with its rule classification: the fold's input (one per event)."""

    touchpoint: CompactTouchpoint
    classification: Classification

    @classmethod
    def of(cls, touchpoint: Touchpoint, rules: PhaseRules) -> ClassifiedTouchpoint:
        """Classify once and keep the compact form: what the aggregate stores per event."""
        return cls(CompactTouchpoint.of(touchpoint), rules.classify(touchpoint))

    @classmethod
    def of_fields(cls, fields: TouchpointFields, rules: PhaseRules) -> ClassifiedTouchpoint | None:
        """`of(Touchpoint.from_fields(fields), rules)` without the model, or None.

        The short way for fields that are already canonical (`compact_touchpoint`),
        classified on their own properties; None leaves the fields to the model,
        which validates (or refuses) them in its own words.
        """
        compact = compact_touchpoint(fields)
        if compact is None:
            return None
        classification = rules.classify_fields(
            compact.channel, compact.source, compact.action, compact.sentiment, fields.properties
        )
        return cls(compact, classification)

    @property
    def order_key(self) -> tuple[datetime, str]:
        return (self.touchpoint.occurred_at, self.touchpoint.event_id)


class PlacedTouchpoint(NamedTuple):
    """A touchpoint as placed in its journey: position and effective phase (a named tuple: one per event)."""

    event_id: str
    seq: int
    phase: Phase
    sentiment: float | None


@dataclass(frozen=True, slots=True)
class ChannelSwitch:
    """The customer moved from one channel to another between two active touchpoints."""

    from_channel: Channel
    to_channel: Channel
    at: datetime
    gap_seconds: int
    phase: Phase
    from_event_id: str
    to_event_id: str
    after_failure: bool
    failure_action: str | None


@dataclass(frozen=True, slots=True)
class PhaseRegression:
    from_phase: Phase
    to_phase: Phase
    at: datetime
    event_id: str


@dataclass(frozen=True, slots=True)
class EmotionLine:
    """Sentiment per touchpoint in order, with the peak (most extreme) and the end."""

    points: tuple[tuple[datetime, str, float], ...]

    @property
    def peak(self) -> float | None:
        # Most extreme feeling; on a tie the earlier one (it was felt first).
        best: float | None = None
        for _, _, value in self.points:
            if best is None or abs(value) > abs(best):
                best = value
        return best

    @property
    def low(self) -> float | None:
        return min((p[2] for p in self.points), default=None)

    @property
    def high(self) -> float | None:
        return max((p[2] for p in self.points), default=None)

    @property
    def end(self) -> float | None:
        return self.points[-1][2] if self.points else None

    @property
    def mean(self) -> float | None:
        return sum(p[2] for p in self.points) / len(self.points) if self.points else None


@dataclass(frozen=True, slots=True)
class Journey:
    """One journey of one customer, as of a watermark."""

    journey_id: str
    customer_id: str
    persona: str | None
    status: JourneyStatus
    started_at: datetime
    ended_at: datetime
    last_active_at: datetime | None
    entry_channel: Channel
    last_phase: Phase
    last_channel: Channel
    last_action: str
    dropoff_phase: Phase | None
    dropoff_channel: Channel | None
    dropoff_action: str | None
    dropoff_event_id: str | None
    # The touchpoint just before the drop-off touchpoint (any kind; None when the drop-off came first).
    dropoff_previous_channel: Channel | None
    dropoff_previous_action: str | None
    phases_reached: tuple[Phase, ...]
    phase_reached_at: tuple[datetime, ...]
    skipped_phases: tuple[Phase, ...]
    regressions: tuple[PhaseRegression, ...]
    channel_switches: tuple[ChannelSwitch, ...]
    channel_counts: dict[Channel, int]
    touchpoint_count: int
    active_touchpoint_count: int
    failure_count: int
    converted_at: datetime | None
    revenue: float
    emotion: EmotionLine
    touchpoints: tuple[PlacedTouchpoint, ...]
    watermark: datetime
    # The customer moves as `phase:channel:action`, consecutive repeats collapsed (`path_variants`).
    path: tuple[str, ...]
    # Distinct (channel, action) of customer moves strictly before the first conversion, conversions
    # themselves excluded; every move when never converted (`moments_of_truth`). First-seen order.
    moments: tuple[tuple[Channel, str], ...]

    @property
    def converted(self) -> bool:
        return self.converted_at is not None

    @property
    def loops(self) -> int:
        """Steps of the path that come back after something else happened."""
        return len(self.path) - len(set(self.path))


def is_late(occurred_at: datetime, watermark: datetime | None) -> bool:
    """Behind the watermark: the touchpoint arrives after journeys were decided without it.

    A touchpoint within the allowed lateness (at or after the watermark) changes
    no decided status: a journey counts as dropped only once the watermark is a
    drop-off timeout past its last move, and anything at or after the watermark
    comes later than that. A late one is still placed in event-time order and
    its journeys refolded (the fold is over the event set, not arrival order):
    it can turn a dropped journey back into an open or converted one, so the
    shells count it and publish the corrected journeys.
    """
    return watermark is not None and occurred_at < watermark


def journey_id_for(customer_id: str, first_event_id: str) -> str:
    """Deterministic id: the same customer and first touchpoint give the same journey."""
    digest = hashlib.sha256(f"{customer_id}\x1f{first_event_id}".encode()).hexdigest()
    return f"jrn_{digest[:16]}"


def split_journeys(
    steps: Sequence[ClassifiedTouchpoint], policy: JourneyPolicy
) -> list[list[ClassifiedTouchpoint]]:
    """Cut one customer's ordered touchpoints into journeys.

    A new journey starts at a customer move that comes after a silence longer
    than the drop-off timeout (before a conversion) or the churn timeout
    (after one). Passive touchpoints never start a journey of their own unless
    there is none yet. (The cut `CustomerFold.extend` makes, without folding.)
    """
    journeys: list[list[ClassifiedTouchpoint]] = []
    last_active: datetime | None = None
    converted = False
    for step in steps:
        cls = step.classification
        at = step.touchpoint.occurred_at
        if not journeys or _starts_journey(cls, at, last_active, converted, policy):
            journeys.append([])
            converted = False
        journeys[-1].append(step)
        if not cls.passive:
            last_active = at
            converted = converted or cls.conversion
    return journeys


def _starts_journey(
    cls: Classification, at: datetime, last_active: datetime | None, converted: bool, policy: JourneyPolicy
) -> bool:
    """A customer move after more silence than the journey so far allows opens a new journey."""
    if cls.passive or last_active is None:
        return False
    return at - last_active > (policy.churn_timeout if converted else policy.dropoff_timeout)


class JourneyFold:
    """One journey's fold so far: touchpoints added in event-time order, read at any watermark.

    `fold_journey` is one of these over all of a journey's touchpoints. The
    stream shell keeps them open (`CustomerFold`) and adds what arrives after
    the last touchpoint, so a batch costs its new touchpoints rather than the
    customer's whole history; reading the journey at a watermark is cheap.
    """

    __slots__ = (
        "active_count",
        "channel_counts",
        "converted_at",
        "emotion",
        "failure_count",
        "last_active",
        "last_active_phase",
        "last_active_seq",
        "last_failure",
        "moments",
        "path",
        "phase",
        "placed",
        "policy",
        "reached_at",
        "reached_order",
        "regressions",
        "revenue",
        "steps",
        "switches",
    )

    def __init__(self, policy: JourneyPolicy) -> None:
        self.policy = policy
        self.steps: list[ClassifiedTouchpoint] = []
        self.placed: list[PlacedTouchpoint] = []
        self.reached_at: dict[Phase, datetime] = {}
        self.reached_order: list[Phase] = []
        self.regressions: list[PhaseRegression] = []
        self.switches: list[ChannelSwitch] = []
        self.channel_counts: dict[Channel, int] = dict.fromkeys(Channel, 0)
        self.emotion: list[tuple[datetime, str, float]] = []
        self.phase = Phase.ORIENTATION
        self.last_active: ClassifiedTouchpoint | None = None
        self.last_active_phase = Phase.ORIENTATION
        self.last_active_seq = 0
        self.last_failure: ClassifiedTouchpoint | None = None
        self.active_count = 0
        self.failure_count = 0
        self.converted_at: datetime | None = None
        self.revenue = 0.0
        self.path: list[str] = []
        # (channel, action) -> first time the customer did it, while not yet converted.
        self.moments: dict[tuple[Channel, str], datetime] = {}

    def add(self, steps: Sequence[ClassifiedTouchpoint]) -> None:
        """Fold touchpoints that come, in this order, after every one added so far."""
        policy = self.policy
        placed, reached_at, reached_order = self.placed, self.reached_at, self.reached_order
        regressions, switches, channel_counts = self.regressions, self.switches, self.channel_counts
        emotion, path, moments = self.emotion, self.path, self.moments
        # The running state in locals for the loop (this is the fold's hot path), stored back after.
        phase, last_active, last_active_phase = self.phase, self.last_active, self.last_active_phase
        last_active_seq, last_failure = self.last_active_seq, self.last_failure
        active_count, failure_count = self.active_count, self.failure_count
        converted_at, revenue = self.converted_at, self.revenue

        for seq, step in enumerate(steps, start=len(self.steps)):
            tp, cls = step.touchpoint, step.classification
            channel_counts[tp.channel] += 1
            if cls.phase is not None:
                phase = cls.phase
            placed.append(PlacedTouchpoint(tp.event_id, seq, phase, cls.sentiment))
            if cls.sentiment is not None:
                emotion.append((tp.occurred_at, tp.event_id, cls.sentiment))
            if cls.failure:
                failure_count += 1

            if not cls.passive:
                active_count += 1
                if (
                    cls.phase is not None
                    and last_active is not None
                    and cls.phase.rank < last_active_phase.rank
                ):
                    regressions.append(
                        PhaseRegression(last_active_phase, cls.phase, tp.occurred_at, tp.event_id)
                    )
                if phase not in reached_at:
                    reached_at[phase] = tp.occurred_at
                    reached_order.append(phase)
                if last_active is not None and last_active.touchpoint.channel != tp.channel:
                    switches.append(_switch(last_active, step, phase, last_failure, policy))
                move = _step(phase, tp.channel, tp.action)
                if not path or path[-1] != move:
                    path.append(move)
                if converted_at is None and not cls.conversion:
                    moments.setdefault((tp.channel, tp.action), tp.occurred_at)
                if cls.conversion and converted_at is None:
                    converted_at = tp.occurred_at
                if cls.conversion and tp.value is not None:
                    revenue += tp.value
                last_active, last_active_phase, last_active_seq = step, phase, seq
            if cls.failure:
                last_failure = step

        self.steps.extend(steps)
        self.phase, self.last_active, self.last_active_phase = phase, last_active, last_active_phase
        self.last_active_seq, self.last_failure = last_active_seq, last_failure
        self.active_count, self.failure_count = active_count, failure_count
        self.converted_at, self.revenue = converted_at, revenue

    def journey(self, customer_id: str, watermark: datetime, persona: str | None = None) -> Journey:
        """The journey as of `watermark` (which decides only its status)."""
        steps, placed, reached_at = self.steps, self.placed, self.reached_at
        if not steps:
            raise ValueError("a journey needs at least one touchpoint")
        first, last_active, converted_at = steps[0].touchpoint, self.last_active, self.converted_at
        if last_active is not None:
            last_tp, last_phase = last_active.touchpoint, self.last_active_phase
        else:
            last_tp, last_phase = steps[-1].touchpoint, placed[-1].phase
        status = _status(
            last_active.touchpoint.occurred_at if last_active else None,
            converted_at,
            Phase.RETENTION in reached_at,
            watermark,
            self.policy,
        )
        dropped = status is JourneyStatus.DROPPED
        seq = self.last_active_seq
        before_dropoff = steps[seq - 1].touchpoint if dropped and seq > 0 else None
        reached_order = self.reached_order
        top_rank = max((p.rank for p in reached_order), default=0)
        return Journey(
            journey_id=journey_id_for(customer_id, first.event_id),
            customer_id=customer_id,
            persona=persona,
            status=status,
            started_at=first.occurred_at,
            ended_at=steps[-1].touchpoint.occurred_at,
            last_active_at=last_active.touchpoint.occurred_at if last_active else None,
            entry_channel=first.channel,
            last_phase=last_phase,
            last_channel=last_tp.channel,
            last_action=last_tp.action,
            dropoff_phase=last_phase if dropped else None,
            dropoff_channel=last_tp.channel if dropped else None,
            dropoff_action=last_tp.action if dropped else None,
            dropoff_event_id=last_tp.event_id if dropped else None,
            dropoff_previous_channel=before_dropoff.channel if before_dropoff else None,
            dropoff_previous_action=before_dropoff.action if before_dropoff else None,
            phases_reached=tuple(reached_order),
            phase_reached_at=tuple(reached_at[p] for p in reached_order),
            skipped_phases=tuple(p for p in PHASE_ORDER[:top_rank] if p not in reached_at),
            regressions=tuple(self.regressions),
            channel_switches=tuple(self.switches),
            channel_counts=dict(self.channel_counts),
            touchpoint_count=len(steps),
            active_touchpoint_count=self.active_count,
            failure_count=self.failure_count,
            converted_at=converted_at,
            revenue=self.revenue,
            emotion=EmotionLine(tuple(self.emotion)),
            touchpoints=tuple(placed),
            watermark=watermark,
            path=tuple(self.path),
            # A move at the very instant of the conversion (ordered before it by event id) did not precede it.
            moments=tuple(
                kind for kind, at in self.moments.items() if converted_at is None or at < converted_at
            ),
        )


def fold_journey(
    customer_id: str,
    steps: Sequence[ClassifiedTouchpoint],
    watermark: datetime,
    policy: JourneyPolicy,
    persona: str | None = None,
) -> Journey:
    """Fold one journey's touchpoints (already in event-time order) into its state."""
    fold = JourneyFold(policy)
    fold.add(steps)
    return fold.journey(customer_id, watermark, persona)


class CustomerFold:
    """All journeys of one customer, kept open for more touchpoints.

    `extend` cuts and folds new touchpoints onto the journeys so far exactly as
    folding the whole history would (`fold_customer` is one `extend`): the cut
    before a touchpoint depends only on the customer's earlier moves, and each
    journey's fold only on its earlier touchpoints. So touchpoints after the
    last one are folded onto the last journey, and a late one rewinds only the
    journeys from the one it falls into: those are cut and folded again with
    it, the earlier ones stay as they are.
    """

    __slots__ = ("_last_key", "_persona_key", "customer_id", "folds", "persona", "policy")

    def __init__(self, customer_id: str, policy: JourneyPolicy) -> None:
        self.customer_id = customer_id
        self.policy = policy
        self.folds: list[JourneyFold] = []
        self.persona: str | None = None  # the persona of the newest touchpoint that has one
        self._persona_key: tuple[datetime, str] | None = None
        self._last_key: tuple[datetime, str] | None = None

    def extend(self, steps: Iterable[ClassifiedTouchpoint]) -> None:
        """Fold touchpoints of this customer not folded yet, in any order."""
        ordered = sorted(steps, key=_ORDER_KEY)
        if not ordered:
            return
        for step in reversed(ordered):
            if step.touchpoint.persona:
                key = _ORDER_KEY(step)
                if self._persona_key is None or key > self._persona_key:
                    self.persona, self._persona_key = step.touchpoint.persona, key
                break
        policy, folds = self.policy, self.folds
        last_key, first_key = self._last_key, _ORDER_KEY(ordered[0])
        if last_key is not None and first_key < last_key:
            # Rewind: from the journey the earliest new touchpoint falls into (the last one that
            # starts before it; the first if none does) to the end, cut and fold again.
            keep = len(folds) - 1
            while keep > 0 and _ORDER_KEY(folds[keep].steps[0]) > first_key:
                keep -= 1
            again = [step for fold in folds[keep:] for step in fold.steps]
            del folds[keep:]
            ordered = sorted(again + ordered, key=_ORDER_KEY)
        current = folds[-1] if folds else None
        last_active = current.last_active.touchpoint.occurred_at if current and current.last_active else None
        converted = current is not None and current.converted_at is not None
        pending: list[ClassifiedTouchpoint] = []
        for step in ordered:
            cls = step.classification
            at = step.touchpoint.occurred_at
            if current is None or _starts_journey(cls, at, last_active, converted, policy):
                if current is not None:
                    current.add(pending)
                current, pending, converted = JourneyFold(policy), [], False
                folds.append(current)
            pending.append(step)
            if not cls.passive:
                last_active = at
                converted = converted or cls.conversion
        if current is not None:
            current.add(pending)
        self._last_key = _ORDER_KEY(ordered[-1])  # the old last is in `ordered` after a rewind

    def journeys(self, watermark: datetime) -> list[Journey]:
        """Every journey of the customer as of `watermark`, oldest first."""
        return [fold.journey(self.customer_id, watermark, self.persona) for fold in self.folds]


_ORDER_KEY = attrgetter("touchpoint.occurred_at", "touchpoint.event_id")  # `order_key`, without a call
_STEPS: dict[tuple[Phase, Channel, str], str] = {}
_MAX_STEPS = 100_000  # step kinds shared; past this (unusually many actions) names are made anew


def _step(phase: Phase, channel: Channel, action: str) -> str:
    """`phase:channel:action`, one shared string per step kind (there are few; journeys are many)."""
    key = (phase, channel, action)
    name = _STEPS.get(key)
    if name is None:
        name = f"{phase.value}:{channel.value}:{action}"
        if len(_STEPS) < _MAX_STEPS:
            _STEPS[key] = name
    return name


def fold_customer(
    customer_id: str,
    steps: Sequence[ClassifiedTouchpoint],
    watermark: datetime,
    policy: JourneyPolicy,
) -> list[Journey]:
    """All journeys of one customer. `steps` may come in any order."""
    fold = CustomerFold(customer_id, policy)
    fold.extend(steps)
    return fold.journeys(watermark)


def _status(
    last_active_at: datetime | None,
    converted_at: datetime | None,
    reached_retention: bool,
    watermark: datetime,
    policy: JourneyPolicy,
) -> JourneyStatus:
    if last_active_at is None:
        return JourneyStatus.UNENGAGED
    silence = watermark - last_active_at
    if converted_at is None:
        return JourneyStatus.DROPPED if silence > policy.dropoff_timeout else JourneyStatus.OPEN
    if silence > policy.churn_timeout:
        return JourneyStatus.CHURNED
    return JourneyStatus.RETAINED if reached_retention else JourneyStatus.CONVERTED


def _switch(
    previous: ClassifiedTouchpoint,
    current: ClassifiedTouchpoint,
    phase: Phase,
    last_failure: ClassifiedTouchpoint | None,
    policy: JourneyPolicy,
) -> ChannelSwitch:
    """A switch follows a failure when a failure signal came since the previous
    customer move (or was that move) and within the failure window."""
    before, after = previous.touchpoint, current.touchpoint
    failed = (
        last_failure is not None
        and last_failure.order_key >= previous.order_key
        and after.occurred_at - last_failure.touchpoint.occurred_at <= policy.failure_window
    )
    return ChannelSwitch(
        from_channel=before.channel,
        to_channel=after.channel,
        at=after.occurred_at,
        gap_seconds=int((after.occurred_at - before.occurred_at).total_seconds()),
        phase=phase,
        from_event_id=before.event_id,
        to_event_id=after.event_id,
        after_failure=failed,
        failure_action=last_failure.touchpoint.action if failed and last_failure else None,
    )
