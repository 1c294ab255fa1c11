"""Twilio Voice status callbacks: form fields as a dict, or the raw form-encoded body.

The customer is the far end of the call: `From` on inbound calls, `To` on
outbound ones (`outbound-api`, `outbound-dial`). Twilio posts one callback per
subscribed call-progress event, so the event id is
`CallSid:CallStatus:SequenceNumber` (without the sequence number when Twilio
sends none): stable across redeliveries, distinct across events of one call.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from urllib.parse import parse_qsl

from journeys.touchpoint import Channel, TouchpointFields

from ..context import IngestContext
from .base import (
    Adapter,
    Identifiers,
    Rejection,
    as_int,
    get_str,
    json_type,
    opt_str,
    parse_rfc2822,
    remembered_identifiers,
    show,
    whole,
)

NAME = "twilio"
CALL_STATUSES: frozenset[str] = frozenset(
    {"queued", "initiated", "ringing", "in-progress", "completed", "busy", "failed", "no-answer", "canceled"}
)
# Direction → (field holding the customer's number, Twilio's alias for that field).
_CUSTOMER_NUMBER = {
    "inbound": ("From", "Caller"),
    "outbound-api": ("To", "Called"),
    "outbound-dial": ("To", "Called"),
}
_COPIED = (
    ("CallSid", "call_sid"),
    ("ParentCallSid", "parent_call_sid"),
    ("CallbackSource", "callback_source"),
    ("AnsweredBy", "answered_by"),
    ("SipResponseCode", "sip_response_code"),
)


def detect(obj: Any) -> bool:
    """A Twilio voice callback: it names a call by its `CallSid`."""
    return isinstance(obj, dict) and "CallSid" in obj


def parse_form(raw: bytes) -> dict[str, str] | None:
    """The fields of an `application/x-www-form-urlencoded` callback body; None if it is not one."""
    if b"CallSid=" not in raw:
        return None
    try:
        text = raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        return None
    return dict(parse_qsl(text, keep_blank_values=True))


split = whole


def _customer_number(value: Any) -> Any:
    # An unescaped `+` in a form body decodes as a space, so `From=+3120…` arrives as
    # ` 3120…`; restore it rather than misread the number as a national one.
    if isinstance(value, str) and value.startswith(" ") and value[1:].isdigit():
        return "+" + value[1:]
    return value


def to_fields(fields: Any, ctx: IngestContext, received_at: datetime) -> TouchpointFields:
    """Map one status callback to a phone touchpoint."""
    if not isinstance(fields, dict):
        raise Rejection(f"a Twilio callback must be an object of form fields, got {json_type(fields)}")
    call_sid = get_str(fields, "CallSid", "CallSid", required=True)
    status = get_str(fields, "CallStatus", "CallStatus", required=True)
    if status not in CALL_STATUSES:
        raise Rejection(f"CallStatus: unknown call status {show(status)}")
    direction = get_str(fields, "Direction", "Direction", required=True)
    if direction not in _CUSTOMER_NUMBER:
        raise Rejection(f"Direction: {show(direction)} is not inbound, outbound-api or outbound-dial")
    occurred_at = parse_rfc2822(fields.get("Timestamp"), "Timestamp")
    sequence = get_str(fields, "SequenceNumber", "SequenceNumber")
    event_id = f"{call_sid}:{status}:{sequence}" if sequence is not None else f"{call_sid}:{status}"

    number_field, alias = _CUSTOMER_NUMBER[direction]
    number = fields.get(number_field) or fields.get(alias)
    identifiers = remembered_identifiers(ctx, (number_field, _customer_number(number)), _collect_identifiers)

    properties: dict[str, Any] = {"direction": direction}
    for source, target in _COPIED:
        value = opt_str(fields, source)
        if value is not None:
            properties[target] = value
    duration = as_int(fields.get("CallDuration"))
    if duration is not None and duration >= 0:
        properties["duration_seconds"] = duration
    billed_minutes = as_int(fields.get("Duration"))
    if billed_minutes is not None and billed_minutes >= 0:
        properties["duration_minutes"] = billed_minutes
    if sequence is not None and (sequence_number := as_int(sequence)) is not None:
        properties["sequence_number"] = sequence_number
    country = opt_str(fields, f"{number_field}Country")
    if country is not None:
        properties["country"] = country

    return TouchpointFields(
        event_id=event_id,
        occurred_at=occurred_at,
        received_at=received_at,
        channel=Channel.PHONE,
        source=NAME,
        action=f"call.{status}",
        identifiers=identifiers,
        properties=properties,
    )


def _collect_identifiers(ids: Identifiers, values: tuple[Any, ...]) -> None:
    """A callback's identifier (the customer's number) from the raw values (all this reads, for the memo)."""
    number_field, number = values
    ids.phone(number, number_field)


ADAPTER = Adapter(name=NAME, detect=detect, split=split, fields=to_fields)
