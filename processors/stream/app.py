"""The Faust app: normalise and reconstruct stages around the pure core.

Both stages take Kafka batches (`take_events`) and hand them to the core whole:
a one-record-at-a-time agent is about 40 times slower than the broker.

- **normalise** parses raw-topic messages and classifies them by the phase
  rules (`ingest.pipeline.parse_records_with` with the embedded run's
  `processors.parsing.classifier`), and sends canonical touchpoints (keyed by
  event_id) and dead letters on.
- **reconstruct** keeps every accepted touchpoint in the `event-log` table
  (backed by its changelog topic, so a restarted or moved worker recovers it),
  folds them with `Reconstruction` — rebuilt from the table after every
  partition assignment — and publishes each batch's changed customers, identity
  changes and new events to the state topic for the ClickHouse sink.

The two align on event time across raw partitions (`alignment.py`): normalise
reports how far it has read each partition with its touchpoints messages and
pauses partitions that ran ahead of the slowest one, its own or another
worker's (the workers exchange their positions on the progress topic);
reconstruct holds touchpoints until every
partition still being read has passed them, and acknowledges a touchpoints
message once all it carried is folded.

The touchpoints topic has one partition: identity stitching is a connected-
components problem over all identifiers, and one owner of the whole graph is
what makes merges across any two customers exact. Normalising (the expensive,
per-record part) scales with the raw topics' partitions and the workers.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

import faust
from faust.transport.drivers import aiokafka as faust_aiokafka
from pydantic import ValidationError

from ingest.pipeline import parse_records_with
from ingest.records import DeadLetter, RawRecord
from ingest.topics import Topics, dead_letter_headers, record_from_message
from journeys.fold import ClassifiedTouchpoint, JourneyStatus
from journeys.live import BatchResult, LiveReconstruction
from journeys.phases import PhaseRules
from journeys.reconstruct import Admission, Reconstruction
from processors.config import Settings
from processors.embedded import ingest_context, refusal_letter
from processors.parsing import classifier
from processors.stream.alignment import (
    PROGRESS_HEADER,
    Alignment,
    PartitionReport,
    PeerPositions,
    ReadProgress,
    ahead_of,
    decode_progress,
    encode_progress,
)
from processors.stream.messages import (
    CHUNK,
    Handoff,
    PublishedJourneys,
    classified_from_object,
    join_touchpoints,
    snapshot_messages,
    state_messages,
    touchpoint_elements,
)
from processors.stream.metrics import Metrics
from processors.stream.offsets import CommitGuard, start_offsets

log = logging.getLogger("journeys.worker")


@dataclass(frozen=True)
class StreamConfig:
    """How a worker reaches Kafka and batches its work.

    The group timeouts default to Faust's; tests against the in-memory broker
    lower them (the first group join otherwise takes about 30 s there).
    """

    bootstrap: str
    topics: Topics = field(default_factory=Topics)
    app_id: str | None = None  # Faust app id = consumer group and changelog prefix; default: the topic prefix
    batch_size: int = 2000
    # Most touchpoints per reconstruct fold. Every fold refolds each affected customer's whole
    # history, so a backlog is worked off in few large folds (was 10,000: 26 s → 22 s for
    # the 3,000-customer stream bench); at a steady rate the batch wait cuts folds short anyway.
    fold_size: int = 50_000
    batch_seconds: float = 0.25  # longest wait for a batch to fill: bounds the latency each stage adds
    partitions: int = 6
    replication_factor: int = 1
    web_port: int | None = 9108
    data_dir: str = ".journeys/worker"
    group_timeouts: tuple[float, float, float] | None = None  # (session, heartbeat, rebalance) seconds
    fetch_max_wait: float = 0.1  # seconds a fetch may wait for data at the broker (Faust fixes 1.5)
    # Event-time alignment across raw partitions (alignment.py): normalise reports how far it has
    # read each partition, reconstruct folds only what every partition still being read has passed.
    align: bool = True
    align_idle_seconds: float = 5.0  # a partition not reported this long holds nothing back
    align_stall_seconds: float = 60.0  # nor one reported whose time has not moved this long
    # nor one whose last record read was written to Kafka less than this ago: a live feed
    align_live_seconds: float = 5.0
    # Most touchpoints held; past it the earliest are folded anyway. The stream bench held at most
    # 73,000–86,000 with one worker, 114,000 with two pacing each other (about 1 KB each).
    align_max_held: int = 200_000
    # How far (event time) a raw partition may be read ahead of the slowest one still being read
    # here before it is paused: bounds what reconstruct holds to about a fetch per partition.
    align_window: timedelta = timedelta(hours=1)
    # Pace by other workers' partitions too (their positions on the progress topic), not only by
    # this worker's own: with several workers reading a backlog, the hold otherwise overflows.
    align_across_workers: bool = True
    # Partitions per raw topic (`ensure_topics`): after an assignment, reconstruct waits for each
    # to be reported (or idle) before it folds, whichever worker reads it.
    raw_partitions: dict[str, int] = field(default_factory=dict)


Message = tuple[bytes | str, bytes | DeadLetter]  # a state-topic message, or a dead letter to send


def _origin(event: Any) -> str:
    return f"{event.message.topic}[{event.message.partition}]@{event.message.offset}"


def _first_error(exc: ValidationError) -> str:
    errors = exc.errors()
    if not errors:
        return str(exc)
    where = ".".join(str(part) for part in errors[0]["loc"])
    return f"{where}: {errors[0]['msg']}" if where else errors[0]["msg"]


# A touchpoints message that carries only the normalise stage's partition reports (its header).
_REPORT_ONLY = (b"progress", join_touchpoints([]))


def _written_at(event: Any) -> float:
    """When a message was written to Kafka (epoch seconds); now, for one without a timestamp or with
    one in the future (a producer's clock running ahead must not make every partition look idle)."""
    timestamp, now = event.message.timestamp, time.time()
    return min(timestamp, now) if timestamp and timestamp > 0 else now


def _headers(event: Any) -> list[tuple[str, bytes]]:
    headers = event.headers or {}
    return list(headers.items()) if isinstance(headers, dict) else list(headers)


class EventLogTable(faust.Table):
    """A one-partition table written after a whole batch, not inside one event.

    Faust takes a key's changelog partition from the event being processed;
    a batch (`take_events`) has no single current event, and the table has
    exactly one partition, so every key goes to partition 0.
    """

    def partition_for_key(self, key: Any) -> int:
        return 0


@dataclass(slots=True)
class _Carrier:
    """A touchpoints message whose touchpoints are not all folded yet: acknowledged once they are."""

    message: Any
    waiting: int = 0
    deferred: bool = False  # its acknowledgement was put off past its batch (`Consumer.keep_for_later`)


class _Held(NamedTuple):
    step: ClassifiedTouchpoint
    raw: bytes
    carrier: _Carrier


class ReconstructStage:
    """The reconstruct stage's in-memory aggregate, rebuilt from the event-log table when needed,
    and the touchpoints it holds for event-time alignment (`alignment.Alignment`)."""

    def __init__(
        self, settings: Settings, rules: PhaseRules, alignment: Alignment[_Held] | None = None
    ) -> None:
        self.settings = settings
        self.rules = rules  # the normalise stage classifies with the same rules
        self.live: LiveReconstruction | None = None
        self.published = PublishedJourneys()  # so that only changed journeys go out again
        self._open: dict[str, int] = {}  # customer id -> open journeys, for the gauge
        # Not `alignment or ...`: an empty Alignment is falsy (it has a length).
        self.alignment: Alignment[_Held] = alignment if alignment is not None else Alignment()
        self._held_at: dict[str, datetime] = {}  # event id -> the time its first held copy waits at

    def hold(self, step: ClassifiedTouchpoint, raw: bytes, carrier: _Carrier) -> None:
        """Hold an arrived touchpoint; a second copy of a held event comes out right behind the first."""
        event_id = step.touchpoint.event_id
        at = self._held_at.setdefault(event_id, step.touchpoint.occurred_at)
        carrier.waiting += 1
        self.alignment.hold(at, _Held(step, raw, carrier))

    def release(self, now: float) -> tuple[list[_Held], list[_Carrier]]:
        """The held touchpoints to fold now (event-time order), and the deferred messages they complete."""
        released = self.alignment.release(now)
        done = []
        for item in released:
            self._held_at.pop(item.step.touchpoint.event_id, None)
            carrier = item.carrier
            carrier.waiting -= 1
            if carrier.waiting == 0 and carrier.deferred:
                done.append(carrier)
        return released, done

    @property
    def open_journeys(self) -> int:
        return sum(self._open.values())

    def count_open(self, result: BatchResult) -> None:
        for customer, journeys in result.journeys.items():
            self._open[customer] = sum(1 for j in journeys if j.status is JourneyStatus.OPEN)

    def forget_aggregate(self) -> None:
        """The aggregate must be rebuilt from the event log (held touchpoints stay held)."""
        self.live = None
        self.published.clear()
        self._open.clear()

    def reset(self) -> None:
        """Partitions moved: the table is restored again, so the aggregate must be rebuilt from it,
        and held touchpoints are read again from the committed offset (never acknowledged)."""
        self.forget_aggregate()
        self.alignment.clear()
        self._held_at.clear()

    def rebuild(self, stored: Sequence[ClassifiedTouchpoint]) -> tuple[LiveReconstruction, BatchResult]:
        """The aggregate as a fold over the stored event log; the result re-reports everything."""
        settings = self.settings
        reconstruction = Reconstruction(self.rules, settings.identity, settings.journey)
        for step in stored:
            reconstruction.admit_classified(step)
        self.live = LiveReconstruction(reconstruction)
        result = self.live.rebuild_result()
        self.count_open(result)
        return self.live, result


class _ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    """Faust's aiokafka consumer thread with a shorter fetch wait than its fixed 1.5 s.

    A broker holds a fetch until data arrives or the wait runs out. Apache
    Kafka answers as soon as data arrives, but not every Kafka-protocol broker
    does (Tansu waits the full time): there, each hop raw → normalise →
    touchpoints → reconstruct added up to 1.5 s of latency. Faust has no
    setting for it, so the wait is set on the consumer before it starts.
    """

    fetch_max_wait_ms = 1500

    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        if hasattr(consumer, "_fetch_max_wait_ms"):  # aiokafka's, read when the consumer starts
            consumer._fetch_max_wait_ms = self.fetch_max_wait_ms
        else:
            log.warning("this aiokafka has no _fetch_max_wait_ms: the fetch wait stays at Faust's 1.5 s")
        return consumer


def _transport_class(fetch_max_wait: float) -> type[faust_aiokafka.Transport]:
    """Faust's aiokafka transport whose worker consumer uses `_ConsumerThread` with this fetch wait."""
    thread = type("ConsumerThread", (_ConsumerThread,), {"fetch_max_wait_ms": int(fetch_max_wait * 1000)})

    class Consumer(faust_aiokafka.Consumer):
        """Faust's consumer with the commit guard (offsets.py) on its acknowledgements and commits,
        delivering every record fetched for a partition alignment paused since."""

        def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
            return thread(self, loop=self.loop, beacon=self.beacon)

        @property
        def _guard(self) -> CommitGuard | None:
            return getattr(self.app, "commit_guard", None)

        def ack(self, message: Any) -> bool:
            guard = self._guard
            if guard is not None and not guard.may_ack(message):
                # Skipped by Faust, never processed: must not count toward a commit.
                self.app.journeys_metrics.inc("journeys_skipped_acks_refused_total", topic=message.topic)
                return False
            return super().ack(message)

        def _new_offset(self, tp: Any) -> int | None:
            guard, acked = self._guard, self._acked.get(tp)
            if (
                guard is not None
                and acked
                and guard.guards(tp.topic)
                and not guard.may_commit(tp, self._committed_offset[tp], min(acked), time.monotonic())
            ):
                return None
            return super()._new_offset(tp)

        def keep_for_later(self, message: Any) -> None:
            """A stage keeps this message past its batch and acknowledges it later (alignment).

            Faust waits for every message it delivered to be acknowledged before
            a rebalance or a stop completes, which for a held touchpoint would be
            never. It need not: an unacknowledged offset is never committed, so a
            message dropped by a rebalance or a stop is read again.
            """
            unacked = getattr(self, "_unacked_messages", None)  # faust-streaming 0.15's name for it
            if unacked is not None:
                unacked.discard(message)
            guard = self._guard
            if guard is not None:
                guard.defer((message.topic, message.partition), message.offset)

        async def _wait_next_records(self, timeout: float) -> Any:
            records, active = await super()._wait_next_records(timeout)
            paused = getattr(self.app, "aligned_paused", None)
            if records and active is not None and paused is not None:
                # Faust delivers a fetch's records only for partitions in its live set of active
                # ones, read while it hands them out (and the stages run), and drops the rest:
                # a partition alignment paused meanwhile would lose them. A snapshot that keeps
                # the fetched paused partitions delivers every record fetched.
                active = set(active) | paused.intersection(records)
            return records, active

        async def _add_gap(self, tp: Any, offset_from: int, offset_to: int) -> None:
            guard = self._guard
            if guard is not None and guard.guards(tp.topic):
                return  # contiguous offsets: a jump means records not processed yet, never acknowledged ones
            await super()._add_gap(tp, offset_from, offset_to)

    return type("Transport", (faust_aiokafka.Transport,), {"Consumer": Consumer})


class JourneysApp(faust.App):
    """faust.App whose consumer transport is `_transport_class(fetch_max_wait)` (set by `create_app`)."""

    fetch_max_wait: float = 1.5

    def _new_transport(self) -> Any:
        transport = _transport_class(self.fetch_max_wait)
        return transport(self.conf.broker_consumer, self, loop=self.loop)


def create_app(settings: Settings, config: StreamConfig) -> faust.App:
    """The worker app; `journeys worker` runs it, tests start it in real worker processes."""
    options: dict[str, Any] = {
        "broker": f"kafka://{config.bootstrap}",
        "store": "memory://",
        "value_serializer": "raw",
        "key_serializer": "raw",
        "topic_partitions": config.partitions,
        "topic_replication_factor": config.replication_factor,
        "consumer_auto_offset_reset": "earliest",
        "web_enabled": config.web_port is not None,
        "web_port": config.web_port or 6066,
        "web_bind": "0.0.0.0",
        "producer_acks": -1,
        "datadir": config.data_dir,
    }
    if config.group_timeouts is not None:
        session, heartbeat, rebalance = config.group_timeouts
        options |= {
            "broker_session_timeout": session,
            "broker_heartbeat_interval": heartbeat,
            "broker_rebalance_timeout": rebalance,
        }
    # One group and one changelog per deployment: deployments sharing a cluster
    # under different topic prefixes must not restore each other's event log.
    app = JourneysApp(config.app_id or config.topics.prefix, **options)
    app.fetch_max_wait = config.fetch_max_wait
    topics, metrics = config.topics, Metrics()
    context = ingest_context(settings, create_key=False)
    rules = settings.rules()
    classify = classifier(rules)  # normalise classifies: its touchpoints reach reconstruct ready to admit
    raw_topic = app.topic(*topics.all_raw, key_type=bytes, value_type=bytes)
    touchpoints_topic = app.topic(topics.touchpoints, partitions=1, key_type=bytes, value_type=bytes)
    state_topic = app.topic(topics.state, partitions=1, key_type=bytes, value_type=bytes)
    dead_letter_topic = app.topic(topics.dead_letters, key_type=bytes, value_type=bytes)
    progress_topic = app.topic(topics.progress, partitions=1, key_type=bytes, value_type=bytes)
    event_log = app.tables.add(
        EventLogTable(
            app,
            name="event-log",
            beacon=app.tables.beacon,
            partitions=1,
            key_type=bytes,
            value_type=bytes,
            help="Accepted touchpoints in chunks keyed by their first event id: the log the fold replays.",
        )
    )
    stage = ReconstructStage(
        settings,
        rules,
        Alignment(config.align_idle_seconds, config.align_max_held, config.align_stall_seconds),
    )
    progress = ReadProgress(config.align_live_seconds)  # the normalise stage's, reported to reconstruct
    fold_lock = asyncio.Lock()  # one fold and its publishing at a time: the agent's, or the idle timer's
    raw_topics = set(topics.all_raw)
    # The frontier of the raw partitions read here, for pausing: a partition whose time stands still
    # for the idle time stops holding the others paused (wrongly so costs only a wider hold).
    reads: Alignment[None] = Alignment(config.align_idle_seconds, stall_seconds=config.align_idle_seconds)
    expected: list[tuple[str, int]] = []  # raw partitions reconstruct waits for before its first fold
    # The other workers' positions (`follow_peers`); a worker not heard from for three idle times
    # paces nobody.
    peers = PeerPositions(stale_seconds=3 * config.align_idle_seconds)
    worker_id = uuid.uuid4().hex  # this process, on the progress topic
    positions_sent: list[Any] = [0.0, set()]  # when (monotonic), and with which pauses, positions went out
    reported_at = [0.0]  # when (monotonic) normalise last sent a touchpoints message (with its reports)
    # The reconstruct stage's clock for alignment: when (Kafka timestamp, epoch seconds) the newest
    # touchpoints message it read was written. A worker reports with every message it sends, so a
    # partition unreported for the idle time *in this clock* has a reader that stopped sending; in
    # the wall clock, a stage behind a queue of other workers' messages would take it for idle.
    queue_clock = [0.0]
    last_batch = [0.0]  # when (monotonic) the reconstruct agent last took or finished a batch
    paused: set[Any] = set()  # raw partitions this process paused for running ahead (`align_reads`)
    app.aligned_paused = paused  # type: ignore[attr-defined]  # read by the consumer (_transport_class)
    handoff = Handoff()
    streamed = {*topics.all_raw, topics.touchpoints}
    guard = CommitGuard(streamed)
    app.commit_guard = guard  # type: ignore[attr-defined]  # read by the consumer (_transport_class)
    read_up_to: dict[Any, int] = {}  # (topic, partition) -> next offset to read, for the lag gauge
    first_read: list[float] = []

    async def note_read(events: Sequence[Any]) -> None:
        """Track what was read (lag gauge); rewind a partition Faust skipped records on after a rebalance."""
        if not first_read and events:
            # Once per process: where processing (not start-up or the group join) began; the bench reads it.
            first_read.append(time.time())
            log.info("first record read", extra={"first_read_at": first_read[0]})
        partitions = {}
        for event in events:
            message = event.message
            read_up_to[message.tp] = max(read_up_to.get(message.tp, 0), message.offset + 1)
            partitions[(message.tp.topic, message.tp.partition)] = message.tp
        guard.took(event.message for event in events)
        awaited = guard.unseen()
        rewind = guard.skipped(
            ((event.message.tp.topic, event.message.tp.partition), event.message.offset) for event in events
        )
        firsts = {}
        for event in events:
            tp = (event.message.tp.topic, event.message.tp.partition)
            if tp in awaited and tp not in firsts:
                firsts[tp] = event.message.offset
        if firsts:
            log.info(
                "first records after the assignment: %s",
                ", ".join(f"{t}[{p}]@{o}" for (t, p), o in firsts.items()),
            )
        await rewind_partitions(rewind, partitions)

    async def rewind_partitions(
        rewind: dict[tuple[str, int], int], partitions: dict[Any, Any], why: str = "records skipped"
    ) -> None:
        for key, offset in rewind.items():
            log.warning("%s on %s[%d]: reading again from %d", why, *key, offset)
            progress.forget(key)  # its time starts over (alignment): what it reads again may be older
            metrics.inc("journeys_rebalance_rewinds_total", topic=key[0])
            await app.consumer.seek(partitions[key], offset)

    async def send_dead_letter(letter: DeadLetter, stage_name: str) -> None:
        metrics.inc("journeys_dead_letters_total", stage=stage_name)
        await dead_letter_topic.send(
            key=letter.origin.encode("utf-8"),
            value=letter.raw,
            headers=dead_letter_headers(letter, stage_name),
        )

    def raw_positions() -> dict[tuple[str, int], tuple[int, int | None]]:
        """Per raw partition assigned here: (next offset to read, the broker's high-water mark or None)."""
        positions: dict[tuple[str, int], tuple[int, int | None]] = {}
        for tp in app.consumer.assignment():
            if tp.topic not in raw_topics:
                continue
            key = (tp.topic, tp.partition)
            try:
                highwater = app.consumer.highwater(tp)
            except Exception:  # not fetched yet
                highwater = None
            positions[key] = (max(read_up_to.get(tp, 0), guard.base(key) or 0), highwater)
        return positions

    async def align_reads() -> list[PartitionReport]:
        """Pause the raw partitions read here that ran `align_window` ahead (event time) of the slowest
        one still being read, here or by another worker, and resume those back within it: the
        Flink-style watermark alignment that keeps what reconstruct must hold small; then tell the
        other workers. Live traffic has every partition caught up, so nothing is paused then.
        Returns the partition reports it judged by (none when not aligning)."""
        if not config.align or app.rebalancing:
            return []
        now = time.monotonic()
        reports = progress.reports(raw_positions())
        reads.report(reports, now)
        here = reads.frontier(now)
        elsewhere = (
            peers.frontier({(r.topic, r.partition) for r in reports}, now)
            if config.align_across_workers
            else None
        )
        frontier = min((t for t in (here, elsewhere) if t is not None), default=None)
        ahead = ahead_of(reports, frontier, config.align_window)
        pause = {tp for tp in app.consumer.assignment() if (tp.topic, tp.partition) in ahead}
        resume = [tp for tp in paused if tp not in pause]
        if pause:
            # Every time: Faust resumes its whole assignment after a recovery, ours included.
            app.consumer.pause_partitions(pause)
            metrics.inc("journeys_alignment_pauses_total", len(pause - paused))
            if frontier is not here:  # the slowest partition is another worker's
                metrics.inc("journeys_alignment_peer_pauses_total", len(pause - paused))
            paused.update(pause)
        if resume:
            app.consumer.resume_partitions(resume)
            paused.difference_update(resume)
        metrics.set("journeys_paused_partitions", len(paused))
        if config.align_across_workers and (now - positions_sent[0] >= 0.25 or positions_sent[1] != ahead):
            # A paused partition, or one read to the end, paces nobody: marked caught up.
            mine = [
                PartitionReport(
                    r.topic, r.partition, r.latest, r.caught_up or (r.topic, r.partition) in ahead
                )
                for r in reports
            ]
            await progress_topic.send(key=worker_id.encode(), value=encode_progress(mine), partition=0)
            positions_sent[:] = [now, ahead]
        return reports

    @app.agent(raw_topic)
    async def normalise(stream: faust.StreamT) -> None:
        async for events in stream.take_events(config.batch_size, within=config.batch_seconds):
            before = encode_progress(progress.reports(raw_positions())) if config.align else b""
            await note_read(events)
            by_partition: dict[tuple[str, int], list[RawRecord]] = {}
            # Per partition, the Kafka timestamp of the last record read (is its reader live?).
            written: dict[tuple[str, int], float] = {}
            for event in events:
                message = event.message
                written[(message.topic, message.partition)] = message.timestamp
                by_partition.setdefault((message.topic, message.partition), []).append(
                    record_from_message(
                        event.value,
                        _headers(event),
                        topic=message.topic,
                        partition=message.partition,
                        offset=message.offset,
                    )
                )
            metrics.inc("journeys_records_in_total", len(events), stage="normalise")
            touchpoints: list[ClassifiedTouchpoint] = []
            for partition, records in by_partition.items():
                made = len(touchpoints)
                for outcome in parse_records_with(records, context, classify):
                    if isinstance(outcome, DeadLetter):
                        await send_dead_letter(outcome, "normalise")
                    else:
                        touchpoints.append(outcome)
                progress.saw(
                    partition,
                    (step.touchpoint.occurred_at for step in touchpoints[made:]),
                    written[partition],
                )
            messages = list(handoff.encode(touchpoints))
            if not config.align:
                for key, value in messages:
                    await touchpoints_topic.send(key=key, value=value)
            else:
                # Each message reports how far the partitions had been read when it was sent: the
                # batch's last after this batch, the others as before it (their batch is not all out).
                after = encode_progress(progress.reports(raw_positions()))
                # A batch of dead letters only still reports, in an empty message.
                messages = messages or [_REPORT_ONLY]
                for index, (key, value) in enumerate(messages):
                    report = after if index == len(messages) - 1 else before
                    await touchpoints_topic.send(key=key, value=value, headers=[(PROGRESS_HEADER, report)])
                reported_at[0] = time.monotonic()
            metrics.inc("journeys_records_out_total", len(touchpoints), stage="normalise")
            await align_reads()

    def ensure_live(now: datetime) -> tuple[LiveReconstruction, list[Message]]:
        """The aggregate, rebuilt from the event log first if needed (with the snapshot that says so)."""
        live = stage.live
        if live is not None:
            return live, []
        stored: dict[str, bytes] = {}
        steps: list[ClassifiedTouchpoint] = []
        for entry in event_log.values():
            for obj, raw in touchpoint_elements(entry):
                step = classified_from_object(obj, rules)  # each stored event is decoded once
                stored[step.touchpoint.event_id] = raw
                steps.append(step)
        live, rebuilt = stage.rebuild(steps)
        log.info("reconstruct: rebuilt from %d stored events", len(stored))
        return live, list(
            snapshot_messages(rebuilt, live.reconstruction, stored, now, stage.published, live.steps)
        )

    def fold_batch(
        batch: list[ClassifiedTouchpoint], raw_events: dict[str, bytes], now: datetime
    ) -> list[Message]:
        """Admit one batch into the aggregate (rebuilt from the event log first if needed)."""
        live, messages = ensure_live(now)
        result = live.admit_classified_batch(batch)
        duplicates = 0
        for touchpoint, admission in result.admissions:
            if admission in (Admission.CONFLICT, Admission.UNIDENTIFIED):
                messages.append(("letter", refusal_letter(touchpoint, admission)))
            elif admission is Admission.DUPLICATE:
                duplicates += 1
        metrics.inc("journeys_duplicates_total", duplicates, stage="reconstruct")
        if result.late:
            # Behind the watermark of what was published: the corrected journeys go out below.
            metrics.inc("journeys_late_events_total", len(result.late), stage="reconstruct")
            log.info("reconstruct: %d late touchpoints corrected published journeys", len(result.late))
        messages += state_messages(result, live.reconstruction, raw_events, now, stage.published, live.steps)
        # One table entry per CHUNK new events, keyed by the first (an event is admitted once).
        new = result.new_touchpoints
        for start in range(0, len(new), CHUNK):
            chunk = new[start : start + CHUNK]
            event_log[chunk[0].event_id.encode()] = join_touchpoints(raw_events[tp.event_id] for tp in chunk)
        stage.count_open(result)
        return messages

    def fold_safely(
        batch: list[ClassifiedTouchpoint], raw_events: dict[str, bytes], now: datetime
    ) -> list[Message]:
        """`fold_batch`, falling back to one touchpoint at a time when the core fails on the batch."""
        try:
            return fold_batch(batch, raw_events, now)
        except Exception:
            # A fault in the core must not stall the log or lose the batch: rebuild
            # from the event log, then admit one touchpoint at a time so only the
            # touchpoint that fails again is dead-lettered.
            log.exception("reconstruct: batch of %d failed; retrying one at a time", len(batch))
            stage.forget_aggregate()
            messages: list[Message] = []
            for step in batch:
                try:
                    messages += fold_batch([step], raw_events, now)
                except Exception as exc:
                    stage.forget_aggregate()
                    reason = f"reconstruction failed: {type(exc).__name__}: {exc}"
                    event_id = step.touchpoint.event_id
                    messages.append(
                        ("letter", DeadLetter(raw_events[event_id], reason, "touchpoint", event_id, now))
                    )
            return messages

    async def publish(messages: list[Message]) -> None:
        for key, value in messages:
            if isinstance(value, DeadLetter):
                await send_dead_letter(value, "reconstruct")
            else:
                await state_topic.send(key=key, value=value)

    def take_progress(event: Any) -> None:
        """The normalise stage's partition reports on a touchpoints message, if it carries any, as of
        when the message was written (the stage's clock, `queue_clock`)."""
        written = _written_at(event)
        queue_clock[0] = max(queue_clock[0], written)
        if not config.align:
            return
        for name, value in _headers(event):
            if name != PROGRESS_HEADER:
                continue
            try:
                stage.alignment.report(decode_progress(value), written)
            except ValueError as exc:  # the touchpoints still count; only this report is ignored
                metrics.inc("journeys_bad_progress_reports_total")
                log.warning("ignored a malformed %s header on %s: %s", PROGRESS_HEADER, _origin(event), exc)

    async def fold_released(arrived: int = 0, quiet: bool = False) -> None:
        """Fold what the alignment releases now, publish it, and acknowledge the messages it completes.

        Run under `fold_lock`: by the agent after each batch, by the idle timer in between (`quiet`:
        no touchpoints message came for the idle time, so the wall clock moves the stage's on).
        """
        now = datetime.now(UTC)
        clock = max(queue_clock[0], time.time()) if quiet else queue_clock[0]
        own = ((tp.topic, tp.partition) for tp in app.consumer.assignment() if tp.topic in raw_topics)
        stage.alignment.keep_alive(own, clock)  # read by this process: silent only while it folds
        frontier = stage.alignment.frontier(clock)  # for the log, as the release saw it
        partitions = stage.alignment.partition_states(clock)
        for (topic, partition), why in sorted(stage.alignment.newly_lapsed(clock).items()):
            # What its reader sends later may be late: worth a line (a departed worker, or a slow one).
            log.info(
                "reconstruct: no longer waiting for %s[%d]: %s",
                topic,
                partition,
                why,
                extra={"topic": topic, "partition": partition, "quiet": quiet},
            )
            metrics.inc("journeys_alignment_lapses_total")
        released, done = stage.release(clock)
        messages: list[Message] = []
        fold_s = 0.0
        if released or stage.live is None:
            began = time.perf_counter()
            for start in range(0, max(1, len(released)), config.fold_size):
                chunk = released[start : start + config.fold_size]
                raw_events = {item.step.touchpoint.event_id: item.raw for item in chunk}
                messages += fold_safely([item.step for item in chunk], raw_events, now)
            fold_s = time.perf_counter() - began
        folded = time.perf_counter()
        await publish(messages)
        publish_s = time.perf_counter() - folded
        for carrier in done:  # everything they carried is folded (and in the event log) now
            message = carrier.message
            guard.undefer((message.topic, message.partition), message.offset)
            message.ack(app.consumer)
        sent = stage.published.take_sent()
        held = len(stage.alignment)
        overflowed, stage.alignment.overflowed = stage.alignment.overflowed, 0
        if not (arrived or released or messages):
            return
        log.info(
            "reconstruct: %d touchpoints in, %d folded, %d held -> %d messages (journeys: %d new, "
            "%d whole again, %d in part, %d kept; %d touchpoint rows); fold %.3f s, publish %.3f s",
            arrived,
            len(released),
            held,
            len(messages),
            sent["new"],
            sent["whole"],
            sent["partial"],
            sent["kept"],
            sent["touchpoint_rows"],
            fold_s,
            publish_s,
            extra={
                "touchpoints": len(released),
                "arrived": arrived,
                "quiet": quiet,
                "held": held,
                "frontier": None if frontier is None else frontier.isoformat(),
                **{f"partitions_{state}": n for state, n in partitions.items()},
                "messages": len(messages),
                "fold_s": fold_s,
                "publish_s": publish_s,
                **{f"journeys_{how}": sent[how] for how in ("new", "whole", "partial", "kept")},
                "touchpoint_rows": sent["touchpoint_rows"],
            },
        )
        metrics.inc("journeys_records_in_total", len(released), stage="reconstruct")
        for how in ("new", "whole", "partial", "kept"):
            metrics.inc("journeys_published_journeys_total", sent[how], how=how)
        metrics.inc("journeys_published_touchpoint_rows_total", sent["touchpoint_rows"])
        metrics.inc("journeys_records_out_total", len(messages), stage="reconstruct")
        metrics.inc("journeys_alignment_overflow_total", overflowed)
        metrics.set("journeys_held_touchpoints", held)
        metrics.set("journeys_open_journeys", stage.open_journeys)

    # Touchpoint messages carry up to CHUNK touchpoints: take up to fold_size touchpoints per fold.
    fold_messages = max(1, config.fold_size // CHUNK)

    @app.agent(touchpoints_topic)
    async def reconstruct(stream: faust.StreamT) -> None:
        async for events in stream.take_events(fold_messages, within=config.batch_seconds):
            last_batch[0] = time.monotonic()
            await note_read(events)
            now = datetime.now(UTC)
            async with fold_lock:
                if expected:
                    stage.alignment.expect(expected, min(_written_at(event) for event in events))
                    expected.clear()
                carriers = []
                arrived = 0
                for event in events:
                    take_progress(event)
                    carrier = _Carrier(event.message)
                    carriers.append(carrier)
                    handed = handoff.take(event.value)
                    if handed is not None:  # from this process's normalise stage: validated, classified
                        for step, raw in zip(*handed, strict=True):
                            stage.hold(step, raw, carrier)
                        arrived += len(handed[0])
                        continue
                    try:
                        elements = touchpoint_elements(event.value)
                    except ValueError as exc:
                        reason = f"not a canonical touchpoint: {exc}"
                        letter = DeadLetter(event.value or b"", reason, "touchpoint", _origin(event), now)
                        await send_dead_letter(letter, "reconstruct")
                        continue
                    for index, (obj, raw) in enumerate(elements):
                        try:
                            step = classified_from_object(obj, rules)
                        except ValidationError as exc:
                            reason = f"not a canonical touchpoint: {_first_error(exc)}"
                            letter = DeadLetter(raw, reason, "touchpoint", f"{_origin(event)}#[{index}]", now)
                            await send_dead_letter(letter, "reconstruct")
                            continue
                        stage.hold(step, raw, carrier)
                        arrived += 1
                await fold_released(arrived)
                for carrier in carriers:
                    if carrier.waiting:  # still holding touchpoints: acknowledged when they are folded
                        message = carrier.message
                        message.incref()  # so that this batch's acknowledgement is not the final one
                        app.consumer.keep_for_later(message)
                        carrier.deferred = True
                last_batch[0] = time.monotonic()

    @app.timer(1.0)
    async def align() -> None:
        """Between batches: resume raw partitions once the slowest caught up or went idle; and once
        no touchpoints message came for the idle time (the feed went quiet), fold what its last
        reports held. Not while messages come: their reports are read only when the agent runs,
        so a long fold would make every partition look unreported."""
        reports = await align_reads()
        if reports and paused and time.monotonic() - reported_at[0] >= 1.0:
            # Every partition here may be paused, waiting for another worker's: keep reporting them,
            # or the reconstruct stage would take them for idle and fold past where they stand.
            key, value = _REPORT_ONLY
            await touchpoints_topic.send(
                key=key, value=value, headers=[(PROGRESS_HEADER, encode_progress(reports))]
            )
            reported_at[0] = time.monotonic()

        def quiet() -> bool:
            return time.monotonic() - last_batch[0] >= config.align_idle_seconds

        if len(stage.alignment) and quiet():
            async with fold_lock:
                if quiet():  # the agent may have taken a batch while this waited for the lock
                    await fold_released(quiet=True)

    if config.align and config.align_across_workers:

        @app.task
        async def follow_peers() -> None:
            """Read the other workers' positions as they are published, outside the consumer group:
            every worker needs every worker's, and a group would hand the one partition to one."""
            import aiokafka

            consumer = aiokafka.AIOKafkaConsumer(
                bootstrap_servers=config.bootstrap, group_id=None, enable_auto_commit=False
            )
            partition = aiokafka.TopicPartition(topics.progress, 0)
            mine = worker_id.encode()
            try:
                await consumer.start()
                consumer.assign([partition])
                await consumer.seek_to_end(partition)  # positions from before this start are stale
                while True:
                    batch = await consumer.getmany(partition, timeout_ms=1000)
                    for record in batch.get(partition, []):
                        if record.key == mine or not record.key:
                            continue
                        try:
                            reports = decode_progress(record.value or b"")
                        except ValueError as exc:
                            metrics.inc("journeys_bad_progress_reports_total")
                            log.warning("ignored malformed positions on %s: %s", topics.progress, exc)
                            continue
                        peers.update(record.key.decode(errors="replace"), reports, time.monotonic())
            finally:
                await consumer.stop()

    @app.timer(5.0)
    async def record_lag() -> None:
        """Consumer lag per assigned partition: the broker's high-water mark minus what was read."""
        for tp in app.consumer.assignment():
            try:
                highwater = app.consumer.highwater(tp)
            except Exception:  # not fetched yet
                continue
            if highwater is None:
                continue
            lag = max(0, highwater - read_up_to.get(tp, 0))
            metrics.set("journeys_consumer_lag", lag, topic=tp.topic, partition=str(tp.partition))

    async def learn_starts(partitions: Sequence[tuple[str, int]]) -> None:
        """Where the group must start these partitions, from the broker: the guard's bases."""
        try:
            starts = await asyncio.get_running_loop().run_in_executor(
                None, start_offsets, config.bootstrap, app.conf.id, partitions
            )
        except Exception as exc:  # asked again every 2 s; meanwhile these partitions' commits wait
            log.warning("could not read where partitions start (%s): their commits wait", exc)
            return
        guard.learn(starts)
        # One line per assignment: where each stream partition must start (diagnosing a loss starts here).
        log.info(
            "commit guard: partitions start at %s",
            ", ".join(f"{topic}[{part}]@{offset}" for (topic, part), offset in sorted(starts.items())),
        )

    @app.timer(2.0)
    async def guard_commits() -> None:
        """Learn starts a failed read left unknown; read again what was dropped in flight (offsets.py)."""
        if guard.unknown:
            await learn_starts(sorted(guard.unknown))
        now = time.monotonic()
        assigned = {(tp.topic, tp.partition): tp for tp in app.consumer.assignment()}
        held = {k: v for k, v in guard.held(now).items() if k in assigned}
        await rewind_partitions(held, assigned, "a commit held by a missing record")
        positions = {}
        for key, tp in assigned.items():
            if tp in paused:
                continue  # not fetched on purpose: its records are not stuck
            try:
                highwater = app.consumer.highwater(tp) if guard.guards(tp.topic) else None
            except Exception:  # not fetched yet
                continue
            if highwater is not None:
                positions[key] = (read_up_to.get(tp, 0), highwater, app.consumer._committed_offset.get(tp))
        stuck = {k: v for k, v in guard.stuck(now, positions).items() if k not in held}
        await rewind_partitions(stuck, assigned, "records on the broker stopped arriving")

    @app.on_partitions_assigned.connect
    async def on_assigned(app: faust.App, assigned: set, **kwargs: Any) -> None:
        stage.reset()
        paused.clear()  # Faust pauses and resumes the whole assignment around a rebalance itself
        reads.clear()
        if config.align and any(tp.topic == topics.touchpoints for tp in assigned):
            # Every raw partition, whichever worker reads it, holds the fold until first reported;
            # from the first batch on, not from now: restoring the event log may take longer than
            # the idle time, and the other workers' reports are waiting in that batch.
            expected[:] = [(t, p) for t, count in config.raw_partitions.items() for p in range(count)]
        names = sorted(f"{tp.topic}[{tp.partition}]" for tp in assigned)
        log.info("assigned partitions: %s", ", ".join(names) or "none")
        wanted = sorted((tp.topic, tp.partition) for tp in assigned if tp.topic in streamed)
        guard.assigned(wanted)
        await learn_starts(wanted)

    if config.web_port is not None:

        @app.page("/metrics")
        async def metrics_page(web: Any, request: Any) -> Any:
            return web.text(metrics.render(), content_type="text/plain; version=0.0.4")

    app.journeys_metrics = metrics  # type: ignore[attr-defined]
    return app
