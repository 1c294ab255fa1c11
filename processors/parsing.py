"""Raw records to classified touchpoints, on several cores for large inputs.

Parsing (JSON decoding, adapters, PII hashing, validation) and classifying by
the phase rules are independent per record and were about 60% of an embedded
run; admitting into the aggregate (identity stitching) is sequential. So for
large inputs, worker processes parse and classify chunks of records while the
calling process admits the outcomes of earlier chunks. They hand back the
compact touchpoints the aggregate keeps (`ClassifiedTouchpoint`), not the
validated models, which cost as much to unpickle as to build.

Outcomes come back in input order: admission order, dead letters and
accounting are exactly what a single process gives, and `parse_workers=1`
runs everything in the calling process.

Worker processes are started with `spawn`: the caller may already hold an
embedded ClickHouse (chDB) with threads of its own, which `fork` would copy
in an unusable state. As with any spawned pool, a script that calls this must
guard its entry point with `if __name__ == "__main__":`.
"""

from __future__ import annotations

import multiprocessing
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from itertools import islice

from ingest.adapters.base import build_touchpoint
from ingest.context import IngestContext
from ingest.pii import PiiHasher
from ingest.pipeline import parse_records_with
from ingest.records import DeadLetter, RawRecord
from journeys.fold import ClassifiedTouchpoint
from journeys.identity import IdentityPolicy
from journeys.phases import PhaseRules
from journeys.touchpoint import TouchpointFields
from processors.runtime import tune_gc_for_bulk

Outcome = ClassifiedTouchpoint | DeadLetter

CHUNK_RECORDS = 1_000
# Below this many records a run never starts a process (starting one costs about a second).
MIN_RECORDS_FOR_PROCESSES = 20_000


@dataclass(frozen=True, slots=True)
class ParseRecipe:
    """Everything a process needs to parse and classify as the caller would (the key, not a hasher)."""

    pii_key: bytes
    policy: IdentityPolicy
    extra_identifier_types: frozenset[str]
    phone_region: str
    rules: PhaseRules

    def context(self) -> IngestContext:
        return IngestContext(
            hasher=PiiHasher(self.pii_key),
            policy=self.policy,
            extra_identifier_types=self.extra_identifier_types,
            phone_region=self.phone_region,
        )


def default_workers() -> int:
    """One core for the caller, the others parse; with fewer than three cores, parsing stays in the caller.

    Measured on 2 cores (3,000-customer demo): the processes' start-up and
    pickling cost about as much wall time as they saved, for 40% more CPU.
    Again at 1M events (busy machine): two parse processes took the caller's
    CPU from 62 to 44 s but not the wall (64 s against 61 s); receiving the
    classified touchpoints costs the caller about 11 µs an event.
    """
    cores = os.cpu_count() or 1
    return cores - 1 if cores >= 3 else 1


def classified_outcomes(
    records: Iterable[RawRecord],
    recipe: ParseRecipe,
    format: str | None = None,
    *,
    workers: int | None = None,
    min_records: int = MIN_RECORDS_FOR_PROCESSES,
) -> Iterator[Outcome]:
    """A classified touchpoint or a dead letter per leaf record, in input order.

    Inputs shorter than `min_records` (or `workers=1`) are parsed here; longer
    ones in `workers` processes, at most two chunks per process in flight so
    memory stays bounded however long the input is.
    """
    iterator = iter(records)
    workers = workers or default_workers()
    head = list(islice(iterator, min_records)) if workers > 1 else []
    if workers == 1 or len(head) < min_records:
        context = recipe.context()
        yield from _classify(head, context, recipe.rules, format)
        yield from _classify(iterator, context, recipe.rules, format)
        return
    spawn = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(workers, mp_context=spawn, initializer=_start, initargs=(recipe, format))
    with pool:
        in_flight: deque[Future[list[Outcome]]] = deque()
        for chunk in _chunks(head, iterator):
            in_flight.append(pool.submit(_classify_chunk, chunk))
            if len(in_flight) >= 2 * workers:
                yield from in_flight.popleft().result()
        while in_flight:
            yield from in_flight.popleft().result()


def classifier(rules: PhaseRules) -> Callable[[TouchpointFields], ClassifiedTouchpoint]:
    """An adapter's fields to the aggregate's classified compact form, validated as the model would.

    Fields that are already canonical (nearly all) go straight to the compact
    form and are classified on the adapter's own properties
    (`ClassifiedTouchpoint.of_fields`); the rest are validated through the model, which
    rejects what it must with its usual reason. Either way the result equals
    `ClassifiedTouchpoint.of(Touchpoint.from_fields(fields), rules)`.
    """
    short_way = ClassifiedTouchpoint.of_fields

    def build(fields: TouchpointFields) -> ClassifiedTouchpoint:
        step = short_way(fields, rules)
        return step if step is not None else ClassifiedTouchpoint.of(build_touchpoint(fields), rules)

    return build


def _classify(
    records: Iterable[RawRecord], context: IngestContext, rules: PhaseRules, format: str | None
) -> Iterator[Outcome]:
    return parse_records_with(records, context, classifier(rules), format)


def _chunks(head: list[RawRecord], rest: Iterator[RawRecord]) -> Iterator[list[RawRecord]]:
    for start in range(0, len(head), CHUNK_RECORDS):
        yield head[start : start + CHUNK_RECORDS]
    while chunk := list(islice(rest, CHUNK_RECORDS)):
        yield chunk


# -- in the worker processes ----------------------------------------------------

_worker: tuple[IngestContext, PhaseRules, str | None] | None = None


def _start(recipe: ParseRecipe, format: str | None) -> None:
    global _worker
    tune_gc_for_bulk()
    _worker = (recipe.context(), recipe.rules, format)


def _classify_chunk(records: list[RawRecord]) -> list[Outcome]:
    assert _worker is not None, "parsing process not initialised"
    context, rules, format = _worker
    return list(_classify(records, context, rules, format))
