"""The reconstruction aggregate: touchpoints in, customers and journeys out.

Both shells drive exactly this object: the embedded runner feeds it files, the
stream workers feed it Kafka batches. Its state is a fold over the touchpoints it
has been given (plus unlink requests), so the same set of events gives the same
customers and journeys whatever order or batching they came in.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum

from journeys.fold import ClassifiedTouchpoint, Journey, JourneyPolicy, fold_customer
from journeys.identity import IdentityGraph, IdentityPolicy
from journeys.phases import PhaseRules
from journeys.touchpoint import Touchpoint


class Admission(Enum):
    """What happened to a touchpoint handed to the aggregate."""

    NEW = "new"
    DUPLICATE = "duplicate"  # same event_id, same content: an exact redelivery, counted
    CONFLICT = "conflict"  # same event_id, different content: rejected, the first one stays
    UNIDENTIFIED = "unidentified"  # every identifier is junk under the policy: nobody to attribute it to


@dataclass
class Reconstruction:
    """Customers and journeys derived from every touchpoint seen so far."""

    rules: PhaseRules
    identity_policy: IdentityPolicy = field(default_factory=IdentityPolicy)
    journey_policy: JourneyPolicy = field(default_factory=JourneyPolicy)

    def __post_init__(self) -> None:
        self.graph = IdentityGraph(self.identity_policy)
        self._steps: dict[str, ClassifiedTouchpoint] = {}  # compact: one per event ever admitted
        self.latest_event_time: datetime | None = None

    def __len__(self) -> int:
        return len(self._steps)

    def admit(self, touchpoint: Touchpoint) -> Admission:
        """Add one touchpoint: classify it once, link its identifiers, keep it (compact)."""
        return self.admit_classified(ClassifiedTouchpoint.of(touchpoint, self.rules))

    def admit_classified(self, step: ClassifiedTouchpoint) -> Admission:
        """`admit` for a touchpoint already classified with this aggregate's rules (e.g. elsewhere)."""
        touchpoint = step.touchpoint
        known = self._steps.get(touchpoint.event_id)
        if known is not None:
            return Admission.DUPLICATE if known.touchpoint.same_event(touchpoint) else Admission.CONFLICT
        if not self.graph.observe(touchpoint.event_id, touchpoint.occurred_at, touchpoint.identifiers):
            return Admission.UNIDENTIFIED
        self._steps[touchpoint.event_id] = step
        if self.latest_event_time is None or touchpoint.occurred_at > self.latest_event_time:
            self.latest_event_time = touchpoint.occurred_at
        return Admission.NEW

    def admit_all(self, touchpoints: Iterable[Touchpoint]) -> dict[Admission, int]:
        counts = dict.fromkeys(Admission, 0)
        for touchpoint in touchpoints:
            counts[self.admit(touchpoint)] += 1
        return counts

    def unlink(self, identifier: tuple[str, str]) -> None:
        """Unmerge: the identifier no longer links anything; affected customers are rebuilt."""
        self.graph.unlink(identifier)

    def step(self, event_id: str) -> ClassifiedTouchpoint:
        return self._steps[event_id]

    def identifiers_of(self, event_id: str) -> tuple[tuple[str, str], ...]:
        """The identifier keys an admitted touchpoint carries."""
        return self._steps[event_id].touchpoint.identifiers

    def event_ids(self) -> Iterator[str]:
        """Every admitted event id, in admission order."""
        return iter(self._steps)

    @property
    def watermark(self) -> datetime | None:
        if self.latest_event_time is None:
            return None
        return self.journey_policy.watermark(self.latest_event_time)

    def customers(self) -> dict[str, list[ClassifiedTouchpoint]]:
        """Every customer with its touchpoints, as the identity graph stands now."""
        grouped: dict[str, list[ClassifiedTouchpoint]] = defaultdict(list)
        # Touchpoints of one device or login carry the same identifiers: resolve each set once.
        resolved: dict[tuple[tuple[str, str], ...], str] = {}
        customer_for = self.graph.customer_for
        for step in self._steps.values():
            keys = step.touchpoint.identifiers
            customer = resolved.get(keys)
            if customer is None:
                customer = resolved[keys] = customer_for(keys)
            grouped[customer].append(step)
        return grouped

    def journeys(self) -> Iterator[Journey]:
        """All journeys, customers in id order and journeys in time order (deterministic)."""
        watermark = self.watermark
        if watermark is None:
            return
        grouped = self.customers()
        for customer_id in sorted(grouped):
            yield from fold_customer(customer_id, grouped[customer_id], watermark, self.journey_policy)
