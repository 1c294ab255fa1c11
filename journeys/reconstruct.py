"""The reconstruction aggregate: touchpoints in, customers and journeys out.

Both shells drive exactly this object: the embedded runner feeds it files, the
stream workers feed it Kafka batches. Its state is a fold over the touchpoints it
has been given (plus unlink requests), so the same set of events gives the same
customers and journeys whatever order or batching they came in.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum

from journeys.fold import ClassifiedTouchpoint, Journey, JourneyPolicy, fold_customer
from journeys.identity import IdentityGraph, IdentityPolicy
from journeys.phases import PhaseRules
from journeys.store import TouchpointColumns
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
        # One row per event ever admitted, stored by column (journeys.store: about a fifth of the
        # memory of one object per event); touchpoints are made again when a fold asks for them.
        self._columns = TouchpointColumns()
        # The graph names linking events by row of the same event id table and times: each kept once.
        self.graph = IdentityGraph(
            self.identity_policy, events=self._columns.event_id_table, times=self._columns.occurred_column
        )
        self.latest_event_time: datetime | None = None

    def __len__(self) -> int:
        return len(self._columns)

    def admit(self, touchpoint: Touchpoint) -> Admission:
        """Add one touchpoint: classify it once, link its identifiers, keep it (compact)."""
        return self.admit_classified(ClassifiedTouchpoint.of(touchpoint, self.rules))

    def admit_classified(self, step: ClassifiedTouchpoint) -> Admission:
        """`admit` for a touchpoint already classified with this aggregate's rules (e.g. elsewhere)."""
        touchpoint = step.touchpoint
        columns = self._columns
        known = columns.row_of(touchpoint.event_id)
        if known is not None:
            kept = columns.step(known).touchpoint
            return Admission.DUPLICATE if kept.same_event(touchpoint) else Admission.CONFLICT
        graph = self.graph
        usable = graph.usable(touchpoint.identifiers)
        if not usable:
            return Admission.UNIDENTIFIED
        row = columns.append(step)
        graph.observe_row(row, usable)
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
        """The admitted touchpoint with this event id, classified (made anew: equal, not identical)."""
        row = self._columns.row_of(event_id)
        if row is None:
            raise KeyError(event_id)
        return self._columns.step(row)

    def identifiers_of(self, event_id: str) -> tuple[tuple[str, str], ...]:
        """The identifier keys an admitted touchpoint carries."""
        row = self._columns.row_of(event_id)
        if row is None:
            raise KeyError(event_id)
        return self._columns.identifiers(row)

    def event_ids(self) -> Iterator[str]:
        """Every admitted event id, in admission order."""
        return self._columns.event_ids()

    @property
    def watermark(self) -> datetime | None:
        if self.latest_event_time is None:
            return None
        return self.journey_policy.watermark(self.latest_event_time)

    def _rows_by_customer(self) -> tuple[list[str], array, array]:
        """Every customer (first-seen order) and its rows, as the graph stands: customer i's rows
        are `rows[starts[i]:starts[i + 1]]`, in admission order.

        Two flat arrays (4 bytes a row, 4 a customer) rather than an array object and a dict
        entry per customer, which at 1M customers held about 200 MB beside the aggregate while
        the state was written."""
        customer_for = self.graph.customer_for
        numbers = array("i")  # row -> customer number
        customers: list[str] = []
        number_of: dict[str, int] = {}
        # Touchpoints of one device or login carry the same identifier set, mostly the very same
        # (shared) tuple object: resolve each object once. Keyed by id(): the column keeps every
        # such object alive, and equal tuples that are distinct objects resolve alike anyway.
        resolved: dict[int, int] = {}
        for keys in self._columns.identifier_column():
            number = resolved.get(id(keys))
            if number is None:
                customer = customer_for(keys)
                number = number_of.get(customer)
                if number is None:
                    number = number_of[customer] = len(customers)
                    customers.append(customer)
                resolved[id(keys)] = number
            numbers.append(number)
        del resolved, number_of
        # A counting sort by customer number: stable, so each customer's rows stay in admission order.
        starts = array("i", bytes(4 * (len(customers) + 1)))
        for number in numbers:
            starts[number + 1] += 1
        for number in range(len(customers)):
            starts[number + 1] += starts[number]
        rows = array("i", bytes(4 * len(numbers)))
        cursor = array("i", starts)
        for row, number in enumerate(numbers):
            rows[cursor[number]] = row
            cursor[number] += 1
        return customers, starts, rows

    def customers(self) -> dict[str, list[ClassifiedTouchpoint]]:
        """Every customer with its touchpoints, as the identity graph stands now (all made at once:
        for inspection and tests; `customer_steps` makes one customer's at a time)."""
        step = self._columns.step
        customers, starts, rows = self._rows_by_customer()
        return {
            customer: [step(row) for row in rows[starts[number] : starts[number + 1]]]
            for number, customer in enumerate(customers)
        }

    def customer_steps(self) -> Iterator[tuple[str, list[ClassifiedTouchpoint]]]:
        """Each customer with its touchpoints (admission order), customers in id order, one at a time."""
        customers, starts, rows = self._rows_by_customer()
        order = array("i", sorted(range(len(customers)), key=customers.__getitem__))
        step = self._columns.step
        for number in order:
            yield customers[number], [step(row) for row in rows[starts[number] : starts[number + 1]]]

    def folded(self) -> Iterator[tuple[list[Journey], list[ClassifiedTouchpoint]]]:
        """Each customer's journeys (time order) with the touchpoints they were folded from,
        customers in id order; one customer's touchpoints exist as objects at a time."""
        watermark = self.watermark
        if watermark is None:
            return
        for customer_id, steps in self.customer_steps():
            yield fold_customer(customer_id, steps, watermark, self.journey_policy), steps

    def journeys(self) -> Iterator[Journey]:
        """All journeys, customers in id order and journeys in time order (deterministic)."""
        for journeys, _ in self.folded():
            yield from journeys
