"""The canonical touchpoint: one interaction of a customer with the organisation.

Every channel adapter in `ingest/` turns a provider's payload into this one shape,
so everything downstream (identity stitching, phase rules, the journey fold,
storage) speaks a single language. Validation lives here, on the model, so an
adapter cannot hand the core a touchpoint that breaks its invariants; errors name
the field and the reason.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator, model_validator


class Channel(StrEnum):
    """The four channels a customer can reach the organisation on."""

    WEB = "web"
    EMAIL = "email"
    PHONE = "phone"
    SOCIAL = "social"


class Phase(StrEnum):
    """The five phases of the customer journey, in their natural order."""

    ORIENTATION = "orientation"
    CONSIDERATION = "consideration"
    PURCHASE = "purchase"
    USAGE = "usage"
    RETENTION = "retention"

    @property
    def rank(self) -> int:
        """0-based position in the journey; used to spot skips and regressions."""
        return PHASE_ORDER.index(self)

    @property
    def label_nl(self) -> str:
        """The Dutch name used in journey-mapping workshops."""
        return PHASE_LABELS_NL[self]


PHASE_ORDER: tuple[Phase, ...] = tuple(Phase)
PHASE_LABELS_NL: dict[Phase, str] = {
    Phase.ORIENTATION: "Oriëntatie",
    Phase.CONSIDERATION: "Afweging",
    Phase.PURCHASE: "Aanschaf",
    Phase.USAGE: "Gebruik",
    Phase.RETENTION: "Retentie–loyaliteit",
}

# Identifier types every deployment understands; config may declare more.
BUILTIN_IDENTIFIER_TYPES: frozenset[str] = frozenset(
    {"anonymous_id", "user_id", "email", "phone", "device_id", "social_handle"}
)
IDENTIFIER_TYPE_PATTERN = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
MAX_IDENTIFIER_VALUE_LENGTH = 512
MAX_EVENT_ID_LENGTH = 256


class Identifier(BaseModel):
    """A typed identifier such as (`email`, <keyed hash>) or (`anonymous_id`, `a-123`).

    Values of PII types (email, phone) are already keyed hashes when they get
    here: `ingest.pii` normalises and hashes them before a touchpoint exists.
    The constraints are declarative so that pydantic checks them in its compiled
    core: identifiers are validated for every touchpoint, on the hot path.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    # lower_snake_case, 1-64 characters
    type: Annotated[str, StringConstraints(pattern=IDENTIFIER_TYPE_PATTERN.pattern)]
    # surrounding white space is not part of an identifier
    value: Annotated[
        str, StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_IDENTIFIER_VALUE_LENGTH)
    ]

    @property
    def key(self) -> tuple[str, str]:
        return (self.type, self.value)


class Touchpoint(BaseModel):
    """One interaction on one channel, in event time.

    `occurred_at` is when it happened (event time, drives every journey
    computation); `received_at` is when we learnt of it (ingest time, only for
    lateness metrics). `action` is the channel's own verb, e.g. `Order Completed`
    (Segment), `bounce` (SendGrid), `call.no-answer` (Twilio).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    event_id: str = Field(min_length=1, max_length=MAX_EVENT_ID_LENGTH)
    occurred_at: datetime
    received_at: datetime | None = None
    channel: Channel
    source: str = Field(min_length=1, max_length=64)
    action: str = Field(min_length=1, max_length=256)
    identifiers: tuple[Identifier, ...] = Field(min_length=1)
    properties: dict[str, Any] = Field(default_factory=dict)
    persona: str | None = Field(default=None, max_length=128)
    sentiment: float | None = Field(default=None, ge=-1.0, le=1.0)
    value: float | None = None
    currency: str | None = Field(default=None, pattern=r"^[A-Z]{3}$")

    @field_validator("occurred_at", "received_at")
    @classmethod
    def _aware_utc(cls, value: datetime | None) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError("timestamp must carry a time zone (event time is compared across sources)")
        # Millisecond precision, the storage's: a touchpoint replayed from the log is equal to the original.
        if value.tzinfo is UTC and value.microsecond % 1000 == 0:
            return value  # the common case, already canonical: no copies on the per-event path
        return value.astimezone(UTC).replace(microsecond=value.microsecond // 1000 * 1000)

    @field_validator("value")
    @classmethod
    def _finite_value(cls, value: float | None) -> float | None:
        if value is not None and not math.isfinite(value):
            raise ValueError("value must be a finite number")
        return value

    @model_validator(mode="after")
    def _currency_goes_with_value(self) -> Touchpoint:
        if self.currency is not None and self.value is None:
            raise ValueError("currency given without a value")
        return self

    def identifier_keys(self) -> tuple[tuple[str, str], ...]:
        return tuple(identifier.key for identifier in self.identifiers)


@dataclass(frozen=True, slots=True)
class CompactTouchpoint:
    """A validated touchpoint in the form the aggregate keeps for every event it has seen.

    The reconstruction holds every touchpoint ever admitted; as pydantic models
    with property dicts they took about 3.5 KB each. This keeps the fields the
    fold and the sinks read, the identifier keys, and the properties as their
    canonical JSON (sorted keys): what storage writes anyway, and a value that
    compares equal exactly when the property dicts do.
    """

    event_id: str
    occurred_at: datetime
    received_at: datetime | None
    channel: Channel
    source: str
    action: str
    identifiers: tuple[tuple[str, str], ...]
    properties_json: str
    persona: str | None
    sentiment: float | None
    value: float | None
    currency: str | None

    @classmethod
    def of(cls, touchpoint: Touchpoint) -> CompactTouchpoint:
        return cls(
            touchpoint.event_id,
            touchpoint.occurred_at,
            touchpoint.received_at,
            touchpoint.channel,
            touchpoint.source,
            touchpoint.action,
            touchpoint.identifier_keys(),
            properties_json(touchpoint.properties),
            touchpoint.persona,
            touchpoint.sentiment,
            touchpoint.value,
            touchpoint.currency,
        )

    def json(self) -> bytes:
        """The touchpoint's canonical JSON, as `Touchpoint.model_dump_json` gives it (for dead letters)."""
        return orjson.dumps(
            {
                "event_id": self.event_id,
                "occurred_at": self.occurred_at,
                "received_at": self.received_at,
                "channel": self.channel.value,
                "source": self.source,
                "action": self.action,
                "identifiers": [{"type": kind, "value": value} for kind, value in self.identifiers],
                "properties": orjson.Fragment(self.properties_json),
                "persona": self.persona,
                "sentiment": self.sentiment,
                "value": self.value,
                "currency": self.currency,
            },
            option=orjson.OPT_UTC_Z,
        )

    def same_event(self, other: CompactTouchpoint) -> bool:
        """Exact redelivery: equal in everything but when we happened to receive it."""
        return replace(self, received_at=None) == replace(other, received_at=None)


def properties_json(properties: dict[str, Any]) -> str:
    """The canonical JSON of a touchpoint's properties (sorted keys), as storage keeps it."""
    return orjson.dumps(properties, option=orjson.OPT_SORT_KEYS).decode()
