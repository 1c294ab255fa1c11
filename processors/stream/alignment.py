"""Event-time alignment across raw partitions: the reconstruct stage folds touchpoints as they happened.

Each raw partition arrives roughly in event-time order, but a worker reads many
partitions at different speeds. Working through a backlog, a partition with few
events a day (phone) runs days of event time ahead of a dense one (web): folded
in arrival order, its touchpoints push the watermark past journeys whose web
events are still unread, which are then published as dropped, and every web
touchpoint read afterwards lands inside a published journey and sends it again.
The stream bench sent 2.5 touchpoint rows per touchpoint that way; in
event-time order, 1.05.

So the stages align on event time, the way Flink's watermarks do:

- the normalise stage tracks, per raw partition it reads, the latest event time
  of the touchpoints it made from it and whether it is caught up (has read
  everything the broker holds, or reads records written seconds ago: a live
  feed), and sends that with its touchpoints messages (`ReadProgress`,
  `PROGRESS_HEADER`);
- the reconstruct stage holds touchpoints (`Alignment`) and folds only those at
  or before the *frontier*: the earliest latest-time among the partitions still
  being read. A partition stops holding the others back once it is caught up
  (so a steady live feed holds nothing), when it is no longer reported (a
  departed worker, or no traffic at all), or when its time has not moved for
  a long while (its reader cannot read it); the hold is bounded by `max_held`
  touchpoints, past which the earliest are folded anyway. The normalise stage
  also pauses partitions that run far ahead of the slowest one, its own or
  another worker's (`ahead_of`, `PeerPositions`, `processors.stream.app`), so
  the hold stays about a fetch per partition.

Holding changes when a touchpoint is folded, never what the fold gives: the
aggregate is a fold over the event set. Held touchpoints are not in the event
log yet, so their Kafka messages are acknowledged only once every touchpoint
they carry has been folded (`processors.stream.app`).
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Generic, TypeVar

import orjson

PROGRESS_HEADER = "journeys-progress"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_BEGINNING = datetime.min.replace(tzinfo=UTC)  # the frontier while a partition has no time yet

Partition = tuple[str, int]
Item = TypeVar("Item")


@dataclass(frozen=True, slots=True)
class PartitionReport:
    """How far one raw partition has been read: its latest event time so far (None: no touchpoint yet)
    and whether its reader is caught up (`ReadProgress.reports`)."""

    topic: str
    partition: int
    latest: datetime | None
    caught_up: bool


def encode_progress(reports: Iterable[PartitionReport]) -> bytes:
    """The header value: `[[topic, partition, latest µs since the epoch or null, caught up], ...]`."""
    return orjson.dumps([[r.topic, r.partition, _micros(r.latest), r.caught_up] for r in reports])


def _micros(at: datetime | None) -> int | None:
    return None if at is None else (at - _EPOCH) // _MICROSECOND


def decode_progress(value: bytes) -> list[PartitionReport]:
    """The reports in a header value; ValueError saying what is wrong with a malformed one."""
    try:
        parsed = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"not JSON: {exc}") from None
    if not isinstance(parsed, list):
        raise ValueError("not a list of partition reports")
    reports = []
    for entry in parsed:
        if not (
            isinstance(entry, list)
            and len(entry) == 4
            and isinstance(entry[0], str)
            and type(entry[1]) is int
            and (entry[2] is None or type(entry[2]) is int)
            and isinstance(entry[3], bool)
        ):
            raise ValueError(f"not a [topic, partition, latest, caught_up] report: {entry!r}")
        topic, partition, micros, caught_up = entry
        try:
            latest = None if micros is None else _EPOCH + timedelta(microseconds=micros)
        except OverflowError:
            raise ValueError(f"latest event time out of range: {micros}") from None
        reports.append(PartitionReport(topic, partition, latest, caught_up))
    return reports


def ahead_of(
    reports: Iterable[PartitionReport], frontier: datetime | None, window: timedelta
) -> set[Partition]:
    """The partitions read more than `window` (event time) ahead of `frontier` (the slowest
    partition still being read; None: nothing is waited for), to pause. The slowest partition is
    never ahead of itself, so a worker pausing by its own frontier always reads something."""
    if frontier is None:
        return set()
    limit = frontier + window
    return {(r.topic, r.partition) for r in reports if r.latest is not None and r.latest > limit}


class ReadProgress:
    """The normalise stage's side: per raw partition, the latest event time of the touchpoints made
    from it, and when (Kafka record timestamp) the last record read from it was written."""

    def __init__(self, live_seconds: float = 5.0) -> None:
        self.live_seconds = live_seconds
        self._latest: dict[Partition, datetime] = {}
        self._written: dict[Partition, float] = {}

    def saw(
        self, partition: Partition, occurred_at: Iterable[datetime], written_at: float | None = None
    ) -> None:
        """Records read from this partition, the last written at `written_at` (seconds since the
        epoch), made touchpoints with these event times."""
        latest = max(occurred_at, default=None)
        if latest is not None:
            before = self._latest.get(partition)
            if before is None or latest > before:
                self._latest[partition] = latest
        if written_at is not None:
            self._written[partition] = written_at

    def forget(self, partition: Partition) -> None:
        """The partition is read again from an earlier offset (a rewind): its time starts over."""
        self._latest.pop(partition, None)
        self._written.pop(partition, None)

    def reports(
        self, positions: Mapping[Partition, tuple[int, int | None]], now: float | None = None
    ) -> list[PartitionReport]:
        """A report per partition read here, from its (next offset to read, broker's high-water mark)
        at wall-clock `now` (seconds since the epoch).

        Caught up means nothing is left to read, or the reader is *live*: the
        last record it read was written less than `live_seconds` ago. A live
        reader's unread records are newer still, a few fetches at most; waiting
        for them would add latency to every touchpoint of a steady feed for
        an order that differs by seconds. Working through a backlog, the
        records being read are older than that, and the partition is waited
        for. A partition whose high-water mark is not known yet (not fetched
        yet) may hold anything: it holds the others back until its records are
        read or it turns out empty.
        """
        now = time.time() if now is None else now
        return [
            PartitionReport(
                topic,
                partition,
                self._latest.get((topic, partition)),
                highwater is not None
                and (
                    read >= highwater or now - self._written.get((topic, partition), 0.0) < self.live_seconds
                ),
            )
            for (topic, partition), (read, highwater) in sorted(positions.items())
        ]


@dataclass(slots=True)
class _Seen:
    latest: datetime | None
    caught_up: bool
    reported_at: float  # when (the stage's clock) it was last reported
    moved_at: float  # when its latest time last moved (or it turned not caught up), or was first reported
    reported: bool = True  # False while only expected (`Alignment.expect`)
    lapsed: bool = False  # lapsed when `Alignment.newly_lapsed` last looked


class Alignment(Generic[Item]):
    """The reconstruct stage's side: touchpoints held until the frontier passes them (see the module doc).

    Items are held with an event time and come out in event-time order, ties
    in the order held: a second copy of a held event, held at the first one's
    time, reaches the aggregate right after it, as it arrived.

    A partition stops holding the others back when it is caught up, when it
    has not been reported for `idle_seconds` (its reader stopped: a departed
    worker, or no traffic at all), or when it has been reported but its time
    has not moved for `stall_seconds` (its reader cannot read it). Times are
    seconds on the caller's clock; the worker uses when each report was written
    to Kafka (the newest for `now`), so neither a stage busy folding nor one
    reading through a queue of other workers' messages takes a slow partition
    for idle: a partition is idle when its reader stopped *writing* reports.
    """

    def __init__(
        self, idle_seconds: float = 5.0, max_held: int = 200_000, stall_seconds: float = 60.0
    ) -> None:
        if idle_seconds <= 0 or stall_seconds <= 0 or max_held < 0:
            raise ValueError("idle_seconds and stall_seconds must be positive, max_held not negative")
        self.idle_seconds = idle_seconds
        self.stall_seconds = stall_seconds
        self.max_held = max_held
        self._partitions: dict[Partition, _Seen] = {}
        self._held: list[tuple[datetime, int, Item]] = []
        self._order = itertools.count()
        self.overflowed = 0  # items folded before the frontier passed them, because of `max_held`

    def report(self, reports: Iterable[PartitionReport], now: float) -> None:
        """Partition reports from a touchpoints message written at `now` (the stage's clock).

        A report replaces what was known of its partition, even when its time
        went back: the partition is read again from an earlier offset then.
        """
        for report in reports:
            key = (report.topic, report.partition)
            seen = self._partitions.get(key)
            if seen is None:
                self._partitions[key] = _Seen(report.latest, report.caught_up, now, now)
                continue
            seen.reported_at = max(seen.reported_at, now)  # (workers' clocks differ a little)
            seen.reported = True
            if report.latest != seen.latest or (seen.caught_up and not report.caught_up):
                # (records arrived where none were left)
                seen.latest, seen.moved_at = report.latest, max(seen.moved_at, now)
            seen.caught_up = report.caught_up

    def expect(self, partitions: Iterable[Partition], now: float) -> None:
        """Partitions that will be reported (every raw partition, when the stage starts): until each is
        reported, or for `idle_seconds` at most, it holds everything. Otherwise the first worker to
        report would have its touchpoints folded before another worker's earlier ones arrive."""
        for key in partitions:
            if key not in self._partitions:
                self._partitions[key] = _Seen(None, False, now, now, reported=False)

    def keep_alive(self, partitions: Iterable[Partition], now: float) -> None:
        """These partitions' reader is known to be running (the stage's own process reads them), so
        their silence is not idleness: a long fold keeps that process's normalise stage from
        sending while the other workers' reports move the clock on (three workers on the stream
        bench had their owner's partitions lapse after long folds: 37,000-59,000 late touchpoints).
        They still stop holding the others back once caught up or stalled. A partition expected but
        never reported is left alone: a reader with nothing to read sends nothing."""
        for key in partitions:
            seen = self._partitions.get(key)
            if seen is not None and seen.reported:
                seen.reported_at = max(seen.reported_at, now)

    def _holds_back(self, seen: _Seen, now: float) -> bool:
        return not (
            seen.caught_up
            or now - seen.reported_at >= self.idle_seconds
            or now - seen.moved_at >= self.stall_seconds
        )

    def frontier(self, now: float) -> datetime | None:
        """The latest event time every partition still being read has reached; None when none is
        (all caught up, idle or stalled): then nothing need wait."""
        frontier: datetime | None = None
        for seen in self._partitions.values():
            if not self._holds_back(seen, now):
                continue
            if seen.latest is None:
                return _BEGINNING  # a partition with records still unread and no time yet: hold all
            if frontier is None or seen.latest < frontier:
                frontier = seen.latest
        return frontier

    def lapsed(self, now: float) -> dict[Partition, str]:
        """The partitions not caught up that hold nothing back any more, each with why: not reported
        for `idle_seconds`, or its time not moved for `stall_seconds`. Folding past one of them makes
        whatever its reader sends later late, so the stage says when one lapses."""
        lapsed: dict[Partition, str] = {}
        for key, seen in self._partitions.items():
            if seen.caught_up or self._holds_back(seen, now):
                continue
            if now - seen.reported_at >= self.idle_seconds:
                lapsed[key] = f"not reported for {now - seen.reported_at:.1f} s"
            else:
                lapsed[key] = f"its time has not moved for {now - seen.moved_at:.1f} s"
        return lapsed

    def newly_lapsed(self, now: float) -> dict[Partition, str]:
        """The partitions that lapsed (`lapsed`) since the last call: each lapse is told once, and
        again only after the partition was waited for or caught up in between, or after `clear`."""
        lapsed = self.lapsed(now)
        told: dict[Partition, str] = {}
        for key, seen in self._partitions.items():
            if key in lapsed and not seen.lapsed:
                told[key] = lapsed[key]
            seen.lapsed = key in lapsed
        return told

    def partition_states(self, now: float) -> dict[str, int]:
        """How many reported partitions are being waited on, caught up, or neither (idle or stalled)."""
        states = {"waiting": 0, "caught_up": 0, "idle": 0}
        for seen in self._partitions.values():
            state = "caught_up" if seen.caught_up else "waiting" if self._holds_back(seen, now) else "idle"
            states[state] += 1
        return states

    def hold(self, at: datetime, item: Item) -> None:
        heapq.heappush(self._held, (at, next(self._order), item))

    def release(self, now: float) -> list[Item]:
        """The held items the frontier has passed, and the earliest beyond `max_held`, in event-time order."""
        frontier = self.frontier(now)
        held, out = self._held, []
        while held and (frontier is None or held[0][0] <= frontier):
            out.append(heapq.heappop(held)[2])
        while len(held) > self.max_held:
            out.append(heapq.heappop(held)[2])
            self.overflowed += 1
        return out

    def clear(self) -> None:
        """The stage is rebuilt (partitions moved): held items will be read again from Kafka."""
        self._held.clear()
        self._partitions.clear()

    def __len__(self) -> int:
        return len(self._held)


class PeerPositions:
    """How far the *other* workers have read their raw partitions, from the reports each publishes
    on the progress topic (the normalise stage's side of alignment across workers).

    A worker pauses by its own partitions' frontier; with several workers, one
    reading sparse partitions (or with more CPU: the worker that does not fold)
    would run days ahead of another, and the reconstruct stage's hold would
    overflow. So each worker publishes its partitions' positions, marking the
    ones it has paused or has read to the end as pacing nobody (`caught_up`),
    and pauses its own by the earliest position among the others' that pace.
    Nobody waits for a partition that is itself waiting. Positions come from
    the workers themselves, a second or less old; the reconstruct stage's view
    of them would be as old as its queue of unread touchpoints messages
    (docs/bench-stream.md, round 9).

    A worker not heard from for `stale_seconds` paces nobody (stopped, or gone).
    """

    def __init__(self, stale_seconds: float = 15.0) -> None:
        if stale_seconds <= 0:
            raise ValueError("stale_seconds must be positive")
        self.stale_seconds = stale_seconds
        self._workers: dict[str, tuple[float, list[PartitionReport]]] = {}

    def update(self, worker: str, reports: list[PartitionReport], now: float) -> None:
        """A worker's published positions, received at `now` (monotonic seconds): they replace its last."""
        self._workers[worker] = (now, reports)

    def frontier(self, own: Collection[Partition], now: float) -> datetime | None:
        """The earliest position among the other workers' partitions that pace (not paused, not read to
        the end, with a time), leaving out the ones read here now (`own`: moved by a rebalance); None
        when there is none."""
        earliest: datetime | None = None
        for worker, (heard, reports) in list(self._workers.items()):
            if now - heard >= self.stale_seconds:
                del self._workers[worker]
                continue
            for r in reports:
                if r.caught_up or r.latest is None or (r.topic, r.partition) in own:
                    continue
                if earliest is None or r.latest < earliest:
                    earliest = r.latest
        return earliest
