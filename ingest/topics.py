"""The Kafka topics raw records travel on, and how a record is framed in a message.

Producers (`journeys produce`, `journeys collect`) and the stream processors
agree on this and nothing else:

- one **raw topic per channel** (`<prefix>.raw.web`, `.raw.email`, `.raw.phone`,
  `.raw.social`); the format decides the channel (`FORMAT_CHANNEL`);
- one message = one `RawRecord`: the value is the record's bytes exactly as
  received (a Segment call or batch, a SendGrid POST body, a Twilio form body,
  one call-CSV row as a JSON object, a social record); headers carry `format`
  (the adapter name; absent: detect per record), `origin` and `received_at`
  (epoch milliseconds, ASCII);
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
    def state(self) -> str:
        """Per-customer journey snapshots from the reconstruction stage, for the ClickHouse sink."""
        return f"{self.prefix}.state"


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
    return RawRecord(value, origin, format_name)


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
