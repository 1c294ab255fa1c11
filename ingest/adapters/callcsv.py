"""The contact-centre call export (docs/ingest.md), one row per call.

`ingest.files` turns each CSV row into a JSON object keyed by the header, so
this adapter reads objects; JSON-lines exports of the same columns work too.
Being our own documented format, its typed columns are strict: a `csat` of 7 or
a negative `wait_seconds` rejects the row instead of being silently dropped.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from journeys.touchpoint import Channel, TouchpointFields

from ..context import IngestContext
from .base import (
    Adapter,
    Identifiers,
    Rejection,
    as_number,
    get_str,
    json_type,
    parse_iso,
    show,
    whole,
)

NAME = "callcsv"
SOURCE = "contact_centre"
OUTCOMES: frozenset[str] = frozenset({"answered", "abandoned", "voicemail", "callback"})
COLUMNS: tuple[str, ...] = (
    "call_id",
    "started_at",
    "ended_at",
    "caller_number",
    "queue",
    "wait_seconds",
    "outcome",
    "ivr_path",
    "csat",
    "sentiment",
    "customer_id",
    "email",
)


def detect(obj: Any) -> bool:
    """A call row: it has a `call_id` and either a caller number or an outcome."""
    return isinstance(obj, dict) and "call_id" in obj and ("caller_number" in obj or "outcome" in obj)


split = whole


def _present(row: dict[str, Any], key: str) -> Any:
    value = row.get(key)
    if isinstance(value, str):
        value = value.strip()
    return None if value in (None, "") else value


def _whole(seconds: float) -> float | int:
    """Whole seconds as an int (`35`, as Twilio's durations are), fractions kept (`61.5`)."""
    return int(seconds) if seconds.is_integer() else seconds


def _sentiment(row: dict[str, Any]) -> tuple[float | None, int | None]:
    raw_sentiment = _present(row, "sentiment")
    raw_csat = _present(row, "csat")
    csat = None
    if raw_csat is not None:
        number = as_number(raw_csat)
        if number is None or not number.is_integer() or not 1 <= number <= 5:
            raise Rejection(f"csat: must be a whole number from 1 to 5, got {show(raw_csat)}")
        csat = int(number)
    if raw_sentiment is not None:
        sentiment = as_number(raw_sentiment)
        if sentiment is None or not -1.0 <= sentiment <= 1.0:
            raise Rejection(f"sentiment: must be a number from -1 to 1, got {show(raw_sentiment)}")
        return sentiment, csat
    # CSAT 1..5 maps linearly onto sentiment -1..1 (3 is neutral).
    return ((csat - 3) / 2 if csat is not None else None), csat


def to_fields(row: Any, ctx: IngestContext, received_at: datetime) -> TouchpointFields:
    """Map one call row to a phone touchpoint."""
    if not isinstance(row, dict):
        raise Rejection(f"a call row must be an object, got {json_type(row)}")
    call_id = get_str(row, "call_id", "call_id", required=True)
    started_at = parse_iso(_present(row, "started_at"), "started_at")
    outcome = get_str(row, "outcome", "outcome", required=True)
    outcome = outcome.lower()
    if outcome not in OUTCOMES:
        raise Rejection(f"outcome: {show(outcome)} is not answered, abandoned, voicemail or callback")

    # The export holds calls customers made to the contact centre.
    properties: dict[str, Any] = {"direction": "inbound"}
    ended = _present(row, "ended_at")
    if ended is not None:
        ended_at = parse_iso(ended, "ended_at")
        if ended_at < started_at:
            raise Rejection("ended_at: before started_at")
        properties["duration_seconds"] = _whole((ended_at - started_at).total_seconds())
    queue = get_str(row, "queue", "queue")
    if queue is not None:
        properties["queue"] = queue
    wait = _present(row, "wait_seconds")
    if wait is not None:
        wait_seconds = as_number(wait)
        if wait_seconds is None or wait_seconds < 0:
            raise Rejection(f"wait_seconds: must be a non-negative number, got {show(wait)}")
        properties["wait_seconds"] = _whole(wait_seconds)
    ivr = get_str(row, "ivr_path", "ivr_path")
    if ivr is not None:
        steps = [step.strip() for step in ivr.split(">") if step.strip()]
        if steps:
            properties["ivr_path"] = ">".join(steps)
    sentiment, csat = _sentiment(row)
    if csat is not None:
        properties["csat"] = csat

    ids = Identifiers(ctx)
    ids.plain("user_id", _present(row, "customer_id"), "customer_id")
    ids.email(_present(row, "email"), "email")
    ids.phone(_present(row, "caller_number"), "caller_number")
    identifiers = ids.build()

    return TouchpointFields(
        event_id=call_id,
        occurred_at=started_at,
        received_at=received_at,
        channel=Channel.PHONE,
        source=SOURCE,
        action=f"call.{outcome}",
        identifiers=identifiers,
        properties=properties,
        sentiment=sentiment,
    )


ADAPTER = Adapter(name=NAME, detect=detect, split=split, fields=to_fields)
