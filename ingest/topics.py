"""The Kafka topics raw records travel on, and how a record is framed in a message.

Producers (`journeys produce`, `journeys collect`) and the stream processors
agree on this and nothing else:

- one **raw topic per channel** (`<prefix>.raw.web`, `.raw.email`, `.raw.phone`,
  `.raw.social`); the format decides the channel (`FORMAT_CHANNEL`);
- one message = one `RawRecord`: the value is the record's bytes exactly as
  received (a Segment call or batch, a SendGrid POST body, a Twilio form body,
  one call-CSV row as a JSON object, a social record); headers carry `format`
  (the adapter name; absent: detect per record), `origin`, `received_at`
  (epoch milliseconds, ASCII) and, for a record the reader already found
  damaged (a CSV row with the wrong field count), `error`;
- the key is a keyed hash of the record's source identity, so one visitor,
  address or call stays in order on one partition and no PII is in the key;
- `<prefix>.dead-letters` holds records any stage refused: the value is the
  redacted raw bytes (`ingest.pii.redact_record`), headers `reason`, `format`,
  `origin`, `stage` and `received_at`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs

import orjson

from .pii import PiiHasher
from .records import DeadLetter, RawRecord

DEFAULT_PREFIX = "journeys"
TOPIC_PREFIX_ENV = "JOURNEYS_TOPIC_PREFIX"
KAFKA_ENV = "JOURNEYS_KAFKA"
DEFAULT_BOOTSTRAP = "localhost:9092"

CHANNELS: tuple[str, ...] = ("web", "email", "phone", "social")
FORMAT_CHANNEL: dict[str, str] = {
    "segment": "web",
    "sendgrid": "email",
    "twilio": "phone",
    "callcsv": "phone",
    "social": "social",
    "meta": "social",
}

Headers = Iterable[tuple[str, bytes]]


@dataclass(frozen=True, slots=True)
class Topics:
    """Topic names under one prefix (several deployments can share a cluster)."""

    prefix: str = DEFAULT_PREFIX

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Topics:
        env = os.environ if environ is None else environ
        return cls(env.get(TOPIC_PREFIX_ENV, "").strip() or DEFAULT_PREFIX)

    def raw(self, channel: str) -> str:
        if channel not in CHANNELS:
            raise ValueError(f"unknown channel {channel!r}; channels: {', '.join(CHANNELS)}")
        return f"{self.prefix}.raw.{channel}"

    def raw_for_format(self, format_name: str) -> str:
        try:
            return self.raw(FORMAT_CHANNEL[format_name])
        except KeyError:
            raise ValueError(
                f"unknown format {format_name!r}; formats: {', '.join(FORMAT_CHANNEL)}"
            ) from None

    @property
    def all_raw(self) -> tuple[str, ...]:
        return tuple(self.raw(channel) for channel in CHANNELS)

    @property
    def dead_letters(self) -> str:
        return f"{self.prefix}.dead-letters"

    @property
    def touchpoints(self) -> str:
        """Canonical touchpoints, keyed by event_id: the event log of the stream stack."""
        return f"{self.prefix}.touchpoints"

    @property
    def progress(self) -> str:
        """How far each worker has read its raw partitions: every worker paces its partitions against
        the others' (docs/stream.md, event-time alignment across workers)."""
        return f"{self.prefix}.progress"

    @property
    def state(self) -> str:
        """Per-customer journey snapshots from the reconstruction stage, for the ClickHouse sink."""
        return f"{self.prefix}.state"


# Fields naming who or what a record is about, most specific first. Twilio callbacks
# are keyed by call (CallSid), so the progress events of one call stay in order
# without putting every outbound call (From = the organisation) on one partition.
_SOURCE_FIELDS: tuple[str, ...] = (
    "userId",
    "anonymousId",
    "email",
    "CallSid",
    "call_id",
    "handle",
    "user_id",
    "id",
)


def source_identity(raw: bytes) -> str | None:
    """Who or what a raw record is about (`field:value`), read cheaply; None if it names nobody.

    Batch envelopes (a Segment batch, a SendGrid array) are keyed by their
    first element: a batch travels as one message, so it stays in order with
    itself whatever its key.
    """
    text = raw.lstrip()
    if not text:
        return None
    if text[:1] not in (b"{", b"["):
        fields = parse_qs(text.decode("utf-8", "replace"), max_num_fields=200)
        return _identity_of({name: values[0] for name, values in fields.items() if values})
    try:
        return _identity_of(orjson.loads(text))
    except orjson.JSONDecodeError:
        return None


def _identity_of(obj: Any) -> str | None:
    for _ in range(3):  # [first element] -> {"batch": [first message]} / {"entry": [...]}
        if isinstance(obj, list):
            obj = obj[0] if obj else None
        elif isinstance(obj, dict) and isinstance(obj.get("batch") or obj.get("entry"), list):
            obj = obj.get("batch") or obj.get("entry")
        else:
            break
    if not isinstance(obj, dict):
        return None
    for name in _SOURCE_FIELDS:
        value = obj.get(name)
        if isinstance(value, str | int) and not isinstance(value, bool) and str(value).strip():
            return f"{name}:{value}"
    return None


def message_key(raw: bytes, hasher: PiiHasher) -> bytes | None:
    """The Kafka key of a raw record: a keyed hash of its source identity (no PII in keys).

    None when the record names nobody; the producer then spreads such records
    over the partitions (a malformed record has no order to keep).
    """
    identity = source_identity(raw)
    return None if identity is None else hasher.hash(identity)[:32].encode("ascii")


def bootstrap_from_env(environ: Mapping[str, str] | None = None) -> str:
    env = os.environ if environ is None else environ
    return env.get(KAFKA_ENV, "").strip() or DEFAULT_BOOTSTRAP


def _ms(value: datetime) -> int:
    return round(value.timestamp() * 1000)


def raw_headers(record: RawRecord, received_at: datetime) -> list[tuple[str, bytes]]:
    """The headers of a raw-topic message for `record`."""
    headers = [("origin", record.origin.encode("utf-8")), ("received_at", str(_ms(received_at)).encode())]
    if record.format is not None:
        headers.append(("format", record.format.encode("utf-8")))
    if record.error is not None:
        headers.append(("error", record.error.encode("utf-8")))
    return headers


def _header_map(headers: Headers | None) -> dict[str, bytes]:
    return {key: value for key, value in (headers or ()) if value is not None}


def record_from_message(
    value: bytes | None, headers: Headers | None, *, topic: str, partition: int, offset: int
) -> RawRecord:
    """The `RawRecord` a raw-topic message carries (origin defaults to its position)."""
    fields = _header_map(headers)
    origin = fields.get("origin", b"").decode("utf-8", "replace") or f"{topic}[{partition}]@{offset}"
    format_name = fields.get("format", b"").decode("utf-8", "replace") or None
    if value is None:
        return RawRecord(b"", origin, format_name, error="empty Kafka message (no value)")
    error = fields.get("error")
    return RawRecord(value, origin, format_name, error.decode("utf-8", "replace") if error else None)


def received_at_of(headers: Headers | None) -> datetime | None:
    """The `received_at` header as a UTC datetime, if present and well-formed."""
    raw = _header_map(headers).get("received_at")
    try:
        return datetime.fromtimestamp(int(raw) / 1000, UTC) if raw else None
    except ValueError:
        return None


def dead_letter_headers(letter: DeadLetter, stage: str) -> list[tuple[str, bytes]]:
    """Headers of a dead-letter message: why, from where, which stage refused it."""
    return [
        ("reason", letter.reason.encode("utf-8")),
        ("format", letter.format.encode("utf-8")),
        ("origin", letter.origin.encode("utf-8")),
        ("stage", stage.encode("utf-8")),
        ("received_at", str(_ms(letter.received_at)).encode()),
    ]
