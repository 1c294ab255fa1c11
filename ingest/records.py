"""What flows into and out of ingest: raw records in, touchpoints or dead letters out.

Every leaf record read (after splitting batch envelopes) yields exactly one
outcome, a `Touchpoint` or a `DeadLetter`, so a run can always account for
every record: read = stored + dead-lettered (+ exact duplicates).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True, slots=True)
class RawRecord:
    """One record as it arrived: its bytes, and where it came from.

    `origin` is human-readable (`orders.jsonl:17`, `calls.csv:row 4`,
    `POST /v1/batch`); `format` is the format the caller asked for, or None to
    auto-detect per record. `error` is set by a reader that could not produce a
    usable record (a CSV row with the wrong number of fields, a truncated gzip
    stream); the pipeline turns such a record into a dead letter with that reason.
    """

    raw: bytes
    origin: str
    format: str | None = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A record that could not become a touchpoint, with a readable reason.

    `raw` holds the record's own bytes (for an element of a batch envelope, the
    element re-serialised as JSON) with personal data replaced by keyed hashes
    or `<redacted>` (`ingest.pii.redact_record`), so it can be inspected without
    exposing anyone; the source keeps the original for a replay.
    """

    raw: bytes
    reason: str
    format: str
    origin: str
    received_at: datetime
