"""The embedded shell: files in, ClickHouse out, in one process.

A run replays the event log already stored (so state is a fold over every event
ever accepted, not just this run's files), admits the new records, writes the
new events, the dead letters and the rewritten derived state, and records the
run's accounting: records read = new touchpoints + exact duplicates + dead letters.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from clickhouse_connect.driver.client import Client

from ingest.files import read_records
from ingest.pipeline import FORMATS, IngestContext
from ingest.records import DeadLetter, RawRecord
from journeys.fold import is_late
from journeys.phases import PhaseRules
from journeys.reconstruct import Admission, Reconstruction
from journeys.touchpoint import CompactTouchpoint
from processors.config import Settings
from processors.parsing import ParseRecipe, classified_outcomes
from processors.runtime import collector_paused, tune_gc_for_bulk
from processors.sinks import clickhouse as sink
from processors.storage import Target, connect, migrate

DEAD_LETTER_FLUSH = 10_000
# New events go to the log in chunks as they are admitted: the aggregate keeps a compact
# copy, so the validated models need not stay in memory until the end of the run. A run
# that fails part-way leaves its first events in the log; the next run replays them
# (they count as replayed, its own copies as duplicates) and rewrites the state.
EVENT_FLUSH = 20_000


@dataclass
class RunSummary:
    """What a run did with every record it read."""

    run_id: str
    inputs: list[str]
    started_at: datetime
    finished_at: datetime | None = None
    records_read: int = 0
    touchpoints_new: int = 0
    duplicates: int = 0
    dead_letters: int = 0
    dead_letter_reasons: dict[str, int] = field(default_factory=dict)
    journeys_written: int = 0
    journeys_deleted: int = 0
    replayed: int = 0
    late_events: int = 0  # new touchpoints behind the watermark of the state stored before the run
    watermark: datetime | None = None

    @property
    def accounted(self) -> bool:
        return self.records_read == self.touchpoints_new + self.duplicates + self.dead_letters

    @property
    def seconds(self) -> float:
        end = self.finished_at or datetime.now(UTC)
        return (end - self.started_at).total_seconds()


def _reason_kind(reason: str) -> str:
    return reason.split(":", 1)[0][:80]


_REFUSAL_REASONS = {
    Admission.CONFLICT: "event_id {event_id!r} was already used by a different record; the first one is kept",
    Admission.UNIDENTIFIED: (
        "no usable identifier: every identifier is a junk value under the identity policy"
    ),
}


def refusal_letter(touchpoint: CompactTouchpoint, admission: Admission) -> DeadLetter:
    """A dead letter for a valid touchpoint the aggregate refused (its canonical JSON as raw).

    The raw JSON leaves out when the record arrived (that is the letter's own
    `received_at`): a redelivery of the same refused record is then the same dead
    letter (same fingerprint), stored once however often it comes.
    """
    return DeadLetter(
        raw=touchpoint._replace(received_at=None).json(),
        reason=_REFUSAL_REASONS[admission].format(event_id=touchpoint.event_id),
        format=touchpoint.source,
        origin=f"event {touchpoint.event_id}",
        received_at=touchpoint.received_at or datetime.now(UTC),
    )


def open_reconstruction(client: Client, settings: Settings) -> tuple[Reconstruction, int]:
    """Rebuild the aggregate from the stored event log and unlink requests."""
    reconstruction = Reconstruction(settings.rules(), settings.identity, settings.journey)
    replayed = sum(reconstruction.admit_all(sink.read_events(client)).values())
    for identifier in sink.read_unlinks(client):
        reconstruction.unlink(identifier)
    return reconstruction, replayed


def parse_recipe(
    settings: Settings, rules: PhaseRules, *, create_key: bool, pii_key: bytes | None = None
) -> ParseRecipe:
    """How records are parsed and classified under `settings`, here or in a parsing process.

    `pii_key` stands in for the configured key where the caller holds it already (a benchmark
    parsing as the worker it started will)."""
    return ParseRecipe(
        pii_key=pii_key if pii_key is not None else settings.pii_key(create_if_missing=create_key),
        policy=settings.identity,
        extra_identifier_types=frozenset(settings.extra_identifier_types),
        phone_region=settings.phone_region,
        rules=rules,
    )


def ingest_context(settings: Settings, *, create_key: bool, pii_key: bytes | None = None) -> IngestContext:
    """The ingest context under `settings` (where no classification follows: the stream's normalise stage)."""
    return parse_recipe(settings, PhaseRules(), create_key=create_key, pii_key=pii_key).context()


INPUT_SUFFIXES = (".jsonl", ".ndjson", ".jsonlines", ".json", ".csv", ".txt")


def expand_inputs(inputs: Sequence[Path]) -> list[Path]:
    """Files as given; a directory stands for its input files (recursively, in name order)."""
    files: list[Path] = []
    for path in inputs:
        if path.is_dir():
            found = sorted(
                p
                for p in path.rglob("*")
                if p.is_file() and p.name.removesuffix(".gz").endswith(INPUT_SUFFIXES)
            )
            if not found:
                raise FileNotFoundError(f"input directory {path} holds no {', '.join(INPUT_SUFFIXES)} files")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"input {path} does not exist or is not a file")
    return files


def run(
    inputs: Sequence[Path],
    settings: Settings,
    *,
    format: str | None = None,
    command: str = "run",
    progress: Callable[[int], None] | None = None,
) -> RunSummary:
    """Reconstruct `inputs` (files, or directories of them) into the database named by `settings.dsn`."""
    inputs = expand_inputs(inputs)
    records = (record for path in inputs for record in read_records(path, format))
    return run_records(
        records, settings, format=format, inputs=[str(p) for p in inputs], command=command, progress=progress
    )


def run_records(
    records: Iterable[RawRecord],
    settings: Settings,
    *,
    format: str | None = None,
    inputs: list[str] | None = None,
    command: str = "run",
    progress: Callable[[int], None] | None = None,
    parse_workers: int | None = None,
) -> RunSummary:
    """Reconstruct `records` into `settings.dsn`.

    Large inputs are parsed and classified in `parse_workers` processes
    (default: `processors.parsing.default_workers`; 1 keeps everything in this
    process) while this one stitches, folds and writes; the result is the same
    either way.
    """
    if format is not None and format not in FORMATS:
        raise ValueError(f"unknown format {format!r}; known formats: {', '.join(FORMATS)}")
    tune_gc_for_bulk()
    with collector_paused():
        return _run_records(records, settings, format, inputs, command, progress, parse_workers)


def _run_records(
    records: Iterable[RawRecord],
    settings: Settings,
    format: str | None,
    inputs: list[str] | None,
    command: str,
    progress: Callable[[int], None] | None,
    parse_workers: int | None,
) -> RunSummary:
    summary = RunSummary(run_id=uuid.uuid4().hex, inputs=inputs or [], started_at=datetime.now(UTC))
    client = connect(settings.dsn)
    migrate(client)
    reconstruction, summary.replayed = open_reconstruction(client, settings)
    recipe = parse_recipe(settings, reconstruction.rules, create_key=Target.parse(settings.dsn).embedded)
    published = reconstruction.watermark  # late events may correct journeys stored with it

    new: list[CompactTouchpoint] = []
    letters: list[DeadLetter] = []
    # Inserts overlap the rest: ClickHouse writes a chunk while this thread parses, folds, builds the next.
    with sink.BackgroundInserts(client) as store:
        for outcome in classified_outcomes(records, recipe, format, workers=parse_workers):
            summary.records_read += 1
            if isinstance(outcome, DeadLetter):
                letters.append(outcome)
            else:
                admission = reconstruction.admit_classified(outcome)
                if admission is Admission.NEW:
                    new.append(outcome.touchpoint)
                    summary.late_events += is_late(outcome.touchpoint.occurred_at, published)
                    if len(new) >= EVENT_FLUSH:
                        summary.touchpoints_new += sink.write_events(store, new)
                        new.clear()
                elif admission is Admission.DUPLICATE:
                    summary.duplicates += 1
                else:
                    letters.append(refusal_letter(outcome.touchpoint, admission))
            if len(letters) >= DEAD_LETTER_FLUSH:
                _flush_letters(store, letters, summary)
            if progress is not None and summary.records_read % 5000 == 0:
                progress(5000)
        _flush_letters(store, letters, summary)
        summary.touchpoints_new += sink.write_events(store, new)
        summary.journeys_written, summary.journeys_deleted = sink.write_state(store, reconstruction)
        summary.watermark = reconstruction.watermark
        summary.finished_at = datetime.now(UTC)
        sink.write_run(store, summary, command)
    return summary


def _flush_letters(client: sink.Store, letters: list[DeadLetter], summary: RunSummary) -> None:
    for letter in letters:
        kind = _reason_kind(letter.reason)
        summary.dead_letter_reasons[kind] = summary.dead_letter_reasons.get(kind, 0) + 1
    summary.dead_letters += sink.write_dead_letters(client, letters, summary.run_id)
    letters.clear()


def stored_identifier(context: IngestContext, identifier_type: str, value: str) -> tuple[str, str]:
    """The identifier as storage knows it: emails and phones are keyed hashes of the normalised value."""
    if identifier_type == "email":
        return identifier_type, context.hasher.hash_email(value)
    if identifier_type == "phone":
        return identifier_type, context.hasher.hash_phone(value, context.phone_region)
    return identifier_type, value


def unlink_identifier(settings: Settings, identifier_type: str, value: str, reason: str = "") -> RunSummary:
    """Unmerge: record that `identifier` must not link anything, and rewrite the affected state.

    The unlink is itself an event in the log (`identity_unlinks`), so every later
    replay, embedded or streaming, folds it in the same way.
    """
    summary = RunSummary(
        run_id=uuid.uuid4().hex, inputs=[f"unlink {identifier_type}"], started_at=datetime.now(UTC)
    )
    client = connect(settings.dsn)
    migrate(client)
    context = ingest_context(settings, create_key=Target.parse(settings.dsn).embedded)
    identifier = stored_identifier(context, identifier_type, value)
    reconstruction, summary.replayed = open_reconstruction(client, settings)
    if reconstruction.graph.customer_of(identifier) is None:
        raise ValueError(f"no {identifier_type} with that value has been seen; nothing to unlink")
    sink.write_unlink(client, identifier, reason)
    reconstruction.unlink(identifier)
    summary.journeys_written, summary.journeys_deleted = sink.write_state(client, reconstruction)
    summary.watermark = reconstruction.watermark
    summary.finished_at = datetime.now(UTC)
    sink.write_run(client, summary, "unlink")
    return summary
