"""Incremental reconstruction: batches of touchpoints in, the customers whose journeys changed out.

The stream shell cannot refold every customer after every Kafka batch, and it
must not miss a change either. `LiveReconstruction` drives the same
`Reconstruction` aggregate as the embedded runner and keeps four indexes so
that each batch touches only what it affects:

- which events belong to which customer, re-keyed when the identity graph
  reports that identifiers changed customer (a merge, a late link, an unlink);
- each customer's next *deadline*: the event time after which the watermark
  alone changes a journey's status (open → dropped at last activity + drop-off
  timeout, converted/retained → churned at + churn timeout). These are the
  event-time timers: when a batch moves the watermark past a deadline, that
  customer is refolded even though none of its events arrived;
- the identity merges and conflicts last reported, so only their changes go out;
- each customer's journeys kept open (`CustomerFold`): a batch's touchpoints
  are folded onto them, so in event-time order a batch costs its own
  touchpoints, not the customers' whole histories; a late touchpoint refolds
  the journeys from the one it falls into, a split the whole customer.

A customer reported with no journeys has vanished (absorbed by a merge): its
old journeys must be deleted downstream. Folding a customer here and folding it
in `Reconstruction.journeys()` use the same `CustomerFold` (`fold_customer` is
one extend of it), so at the same watermark the journeys are identical: the
equivalence the stream tests check.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime

from journeys.fold import ClassifiedTouchpoint, CustomerFold, Journey, JourneyStatus, is_late
from journeys.identity import IdentityConflict, IdentityMerge, Key
from journeys.reconstruct import Admission, Reconstruction
from journeys.touchpoint import CompactTouchpoint, Touchpoint


@dataclass
class BatchResult:
    """What one batch changed.

    - `admissions`: per touchpoint of the batch, in order;
    - `new_touchpoints`: the ones admitted as new (the event log's growth);
    - `journeys`: every affected customer with all its journeys now (empty: vanished);
    - `identities`: identifiers whose customer changed or that are new;
    - `merges_added` / `merges_removed`, `conflicts_added` / `conflicts_removed`:
      changes of the identity logs (late events can rewrite them);
    - `late`: new touchpoints behind the watermark the batch started from
      (`journeys.fold.is_late`): they may correct journeys already published,
      whose corrected state is in `journeys` like any other change.
    """

    admissions: list[tuple[CompactTouchpoint, Admission]] = field(default_factory=list)
    new_touchpoints: list[CompactTouchpoint] = field(default_factory=list)
    journeys: dict[str, list[Journey]] = field(default_factory=dict)
    identities: dict[Key, str] = field(default_factory=dict)
    merges_added: list[IdentityMerge] = field(default_factory=list)
    merges_removed: list[IdentityMerge] = field(default_factory=list)
    conflicts_added: list[IdentityConflict] = field(default_factory=list)
    conflicts_removed: list[IdentityConflict] = field(default_factory=list)
    watermark: datetime | None = None
    late: list[CompactTouchpoint] = field(default_factory=list)


class LiveReconstruction:
    """A `Reconstruction` fed batch by batch, reporting exactly the customers each batch changed."""

    def __init__(self, reconstruction: Reconstruction) -> None:
        self.reconstruction = reconstruction
        self._members: dict[str, set[str]] = {}  # customer id -> event ids
        self._customer_of_event: dict[str, str] = {}
        # The admitted touchpoints as objects, by event id. Every batch refolds each affected
        # customer's whole history; making them again from the aggregate's columns
        # (`journeys.store`) costs about 20 times a lookup here (4.6 against 0.2 µs a touchpoint),
        # which made the reconstruct stage a quarter slower. This shell trades the memory back
        # (about 600 bytes a touchpoint) for that; the embedded run folds each customer once.
        self._steps: dict[str, ClassifiedTouchpoint] = {}
        # Each customer's journeys kept open (`CustomerFold`), and the touchpoints placed with the
        # customer since: a batch is folded onto them instead of refolding the history (a late
        # touchpoint rewinds only the journeys from the one it falls into). A customer that lost
        # a touchpoint (a split, a merge into another) is folded anew.
        self._folds: dict[str, CustomerFold] = {}
        self._arrived: dict[str, list[str]] = {}
        self._deadlines: list[tuple[datetime, str]] = []  # heap of (deadline, customer id)
        self._merges: set[IdentityMerge] = set()
        self._conflicts: set[IdentityConflict] = set()

    def admit_batch(self, touchpoints: Iterable[Touchpoint]) -> BatchResult:
        """Admit a batch (any order, redeliveries allowed) and report what changed."""
        rules = self.reconstruction.rules
        return self.admit_classified_batch(ClassifiedTouchpoint.of(tp, rules) for tp in touchpoints)

    def admit_classified_batch(self, steps: Iterable[ClassifiedTouchpoint]) -> BatchResult:
        """`admit_batch` for touchpoints classified already with this aggregate's rules (by normalise)."""
        recon = self.reconstruction
        graph = recon.graph
        result = BatchResult()
        affected: set[str] = set()
        published = recon.watermark  # what the state published so far was decided against
        for step in steps:
            touchpoint = step.touchpoint
            admission = recon.admit_classified(step)
            result.admissions.append((touchpoint, admission))
            if admission is Admission.NEW:
                self._steps[touchpoint.event_id] = step
                result.new_touchpoints.append(touchpoint)
                if is_late(touchpoint.occurred_at, published):
                    result.late.append(touchpoint)

        # Identity changes first: events of customers that merged or split are re-keyed.
        rekeyed: set[str] = set()
        for identifier, (old, new) in graph.drain_changes().items():
            result.identities[identifier] = new
            for customer in (old, new):
                if customer is not None and customer not in rekeyed:
                    rekeyed.add(customer)
                    affected.add(customer)
                    self._rekey(customer, affected)
        for touchpoint in result.new_touchpoints:
            self._place(touchpoint.event_id, affected)

        watermark = recon.watermark
        result.watermark = watermark
        if watermark is None:
            return result
        # Event-time timers: the watermark alone changes these customers' status.
        deadlines = self._deadlines
        while deadlines and deadlines[0][0] < watermark:
            affected.add(heapq.heappop(deadlines)[1])

        for customer in sorted(affected):
            result.journeys[customer] = self._fold(customer, watermark)
        self._diff_identity_logs(result)
        return result

    def rebuild_result(self) -> BatchResult:
        """Everything as one result: every customer, identity and log entry (after a recovery)."""
        result = BatchResult(watermark=self.reconstruction.watermark)
        graph = self.reconstruction.graph
        result.identities = graph.assignment()
        graph.drain_changes()
        self._members.clear()
        self._customer_of_event.clear()
        self._steps.clear()
        self._folds.clear()
        self._arrived.clear()
        self._deadlines.clear()
        self._merges.clear()
        self._conflicts.clear()
        affected: set[str] = set()
        for event_id in self.reconstruction.event_ids():
            self._place(event_id, affected)
        if result.watermark is not None:
            for customer in sorted(affected):
                result.journeys[customer] = self._fold(customer, result.watermark)
        self._diff_identity_logs(result)
        return result

    @property
    def steps(self) -> Mapping[str, ClassifiedTouchpoint]:
        """The touchpoints this shell holds as objects, by event id (read-only): every one admitted
        through it and every one a fold needed, so all that a batch's journeys were folded from
        (for writing their touchpoint rows)."""
        return self._steps

    # -- internals --------------------------------------------------------------

    def _place(self, event_id: str, affected: set[str]) -> None:
        customer = self.reconstruction.graph.customer_for(self.reconstruction.identifiers_of(event_id))
        previous = self._customer_of_event.get(event_id)
        if previous == customer:
            return
        if previous is not None:
            self._members[previous].discard(event_id)
            self._folds.pop(previous, None)
            affected.add(previous)
        self._customer_of_event[event_id] = customer
        self._members.setdefault(customer, set()).add(event_id)
        self._arrived.setdefault(customer, []).append(event_id)
        affected.add(customer)

    def _rekey(self, customer: str, affected: set[str]) -> None:
        for event_id in list(self._members.get(customer, ())):
            self._place(event_id, affected)

    def _fold(self, customer: str, watermark: datetime) -> list[Journey]:
        members = self._members.get(customer)
        arrived = self._arrived.pop(customer, ())
        if not members:
            self._members.pop(customer, None)
            self._folds.pop(customer, None)
            return []
        fold = self._folds.get(customer)
        if fold is None:
            fold = self._folds[customer] = CustomerFold(customer, self.reconstruction.journey_policy)
            arrived = members
        fold.extend([self._step(event_id) for event_id in arrived])
        journeys = fold.journeys(watermark)
        deadline = _next_deadline(journeys, watermark, self.reconstruction)
        if deadline is not None:
            heapq.heappush(self._deadlines, (deadline, customer))
        return journeys

    def _step(self, event_id: str) -> ClassifiedTouchpoint:
        step = self._steps.get(event_id)
        if step is None:  # admitted before this shell knew the aggregate (a rebuild)
            step = self._steps[event_id] = self.reconstruction.step(event_id)
        return step

    def _diff_identity_logs(self, result: BatchResult) -> None:
        graph = self.reconstruction.graph
        merges, conflicts = set(graph.merges), set(graph.conflicts)
        result.merges_added = sorted(merges - self._merges, key=_log_order)
        result.merges_removed = sorted(self._merges - merges, key=_log_order)
        result.conflicts_added = sorted(conflicts - self._conflicts, key=_log_order)
        result.conflicts_removed = sorted(self._conflicts - conflicts, key=_log_order)
        self._merges, self._conflicts = merges, conflicts


def _log_order(entry: IdentityMerge | IdentityConflict) -> tuple[datetime, str]:
    return (entry.occurred_at, entry.event_id)


def _next_deadline(journeys: list[Journey], watermark: datetime, recon: Reconstruction) -> datetime | None:
    """The earliest event time past which the watermark alone changes one of these journeys."""
    policy = recon.journey_policy
    candidates = []
    for journey in journeys:
        if journey.last_active_at is None:
            continue  # unengaged whatever the watermark
        if journey.status is JourneyStatus.OPEN:
            candidates.append(journey.last_active_at + policy.dropoff_timeout)
        elif journey.status in (JourneyStatus.CONVERTED, JourneyStatus.RETAINED):
            candidates.append(journey.last_active_at + policy.churn_timeout)
    future = [c for c in candidates if c >= watermark]
    return min(future) if future else None
