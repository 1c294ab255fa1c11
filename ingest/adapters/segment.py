"""Segment Spec calls (track, page, screen, identify, alias, group) and `/v1/batch` envelopes.

Event time precedence, following Segment's own timestamp semantics:

1. `timestamp` — Segment's skew-corrected time (or the time a server library set).
2. `receivedAt - (sentAt - originalTimestamp)` when all three are known: the
   device clock's skew is the gap between `sentAt` (device clock) and
   `receivedAt` (Segment's clock), applied back to `originalTimestamp`.
3. `originalTimestamp` alone (device clock, uncorrected).
4. `receivedAt`, then `sentAt`.

A batch envelope's `sentAt` and `context` apply to every call in it (the call's
own context wins key by key), so each split call is self-contained: its dead
letter can be replayed on its own.

`alias.previousId` is taken as an `anonymous_id`: that is what analytics.js
sends, and `user_id` is unique per customer, so a second user id would make the
identity graph refuse the very link the alias asks for.
"""

from __future__ import annotations

import re
from datetime import datetime
from functools import lru_cache
from typing import Any

from journeys.touchpoint import Channel, TouchpointFields

from ..context import IngestContext
from ..pii import redact_emails, scrub_properties
from .base import (
    Adapter,
    Identifiers,
    Leaf,
    Rejection,
    as_number,
    get_obj,
    get_str,
    json_type,
    opt_obj,
    opt_str,
    parse_iso,
    remembered_identifiers,
    show,
)

NAME = "segment"
CALL_TYPES: frozenset[str] = frozenset({"track", "page", "screen", "identify", "alias", "group"})
_FIXED_ACTIONS = {
    "page": "Page Viewed",
    "screen": "Screen Viewed",
    "identify": "Identify",
    "alias": "Alias",
    "group": "Group",
}
_PAGE_FIELDS = ("url", "path", "title", "referrer")
_URL_FIELDS = ("url", "referrer")
# Checked in this order; Segment's e-commerce spec defines `revenue` (excl. shipping and tax).
_VALUE_KEYS = ("revenue", "total", "value")
_CAMEL_BOUNDARY = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_NON_WORD = re.compile(r"[^a-z0-9]+")


def detect(obj: Any) -> bool:
    """A Segment call (`type` is a Spec call type) or a batch envelope."""
    if not isinstance(obj, dict):
        return False
    kind = obj.get("type")
    return (isinstance(kind, str) and kind in CALL_TYPES) or isinstance(obj.get("batch"), list)


def split(obj: Any) -> list[Leaf]:
    """Calls of a batch envelope, each with the envelope's `sentAt` and `context`; else the call."""
    if "batch" not in obj:
        return [Leaf("", obj)]
    batch = obj["batch"]
    if not isinstance(batch, list):
        return [Leaf("", obj, f"batch: must be an array of calls, got {json_type(batch)}")]
    if not batch:
        return [Leaf("", obj, "batch: holds no calls")]
    shared_context = obj.get("context") if isinstance(obj.get("context"), dict) else None
    sent_at = obj.get("sentAt")
    leaves = []
    for index, call in enumerate(batch):
        path = f"batch[{index}]"
        if not isinstance(call, dict):
            leaves.append(Leaf(path, call, f"{path}: must be an object, got {json_type(call)}"))
        else:
            leaves.append(Leaf(path, _inherit(call, shared_context, sent_at)))
    return leaves


def _inherit(call: dict[str, Any], context: dict[str, Any] | None, sent_at: Any) -> dict[str, Any]:
    if context is None and (sent_at is None or "sentAt" in call):
        return call
    merged = dict(call)
    if sent_at is not None and "sentAt" not in call:
        merged["sentAt"] = sent_at
    if context is not None:
        own = call.get("context")
        if own is None:
            merged["context"] = context
        elif isinstance(own, dict):
            combined = dict(context)
            for key, value in own.items():
                shared = combined.get(key)
                combined[key] = (
                    {**shared, **value} if isinstance(shared, dict) and isinstance(value, dict) else value
                )
            merged["context"] = combined
    return merged


def event_time(call: dict[str, Any]) -> datetime:
    """When the call happened; see the module docstring for the precedence."""
    if call.get("timestamp") is not None:
        return parse_iso(call["timestamp"], "timestamp")
    original = call.get("originalTimestamp")
    received = call.get("receivedAt")
    sent = call.get("sentAt")
    if original is not None:
        original_at = parse_iso(original, "originalTimestamp")
        if received is not None and sent is not None:
            received_at, sent_at = parse_iso(received, "receivedAt"), parse_iso(sent, "sentAt")
            try:
                return received_at - (sent_at - original_at)
            except OverflowError:
                raise Rejection("originalTimestamp: clock-skew correction is out of range") from None
        return original_at
    if received is not None:
        return parse_iso(received, "receivedAt")
    if sent is not None:
        return parse_iso(sent, "sentAt")
    raise Rejection("timestamp: missing (no originalTimestamp, receivedAt or sentAt either)")


@lru_cache(maxsize=1024)
def snake_case(name: str) -> str:
    """`stripeCustomerId` / `Stripe Customer ID` → `stripe_customer_id` (externalIds types)."""
    return _NON_WORD.sub("_", _CAMEL_BOUNDARY.sub("_", name.strip()).lower()).strip("_")


def to_fields(call: Any, ctx: IngestContext, received_at: datetime) -> TouchpointFields:
    """Map one Segment call to a web touchpoint."""
    if not isinstance(call, dict):
        raise Rejection(f"a Segment call must be an object, got {json_type(call)}")
    kind = call.get("type")
    if kind is None:
        raise Rejection("type: missing")
    if not isinstance(kind, str) or kind not in CALL_TYPES:
        raise Rejection(
            f"type: {show(kind)} is not a Segment call (track, page, screen, identify, alias, group)"
        )
    event_id = get_str(call, "messageId", "messageId", required=True)
    action = get_str(call, "event", "event", required=True) if kind == "track" else _FIXED_ACTIONS[kind]
    context = get_obj(call, "context", "context")
    context_traits = get_obj(context, "traits", "context.traits")
    traits = get_obj(call, "traits", "traits") if kind == "identify" else {}
    occurred_at = event_time(call)

    alias = kind == "alias"
    device = opt_obj(context, "device")
    external_ids = context.get("externalIds")
    identifiers = remembered_identifiers(
        ctx,
        (
            alias,
            call.get("userId"),
            call.get("anonymousId"),
            call.get("previousId") if alias else None,
            bool(traits),
            traits.get("email"),
            traits.get("phone"),
            bool(context_traits),
            context_traits.get("email"),
            context_traits.get("phone"),
            bool(device),
            device.get("id"),
            external_ids if ctx.extra_identifier_types and isinstance(external_ids, list) else None,
        ),
        _collect_identifiers,
    )

    raw_properties = get_obj(call, "properties", "properties")
    properties = scrub_properties(raw_properties) if raw_properties else {}
    for key in _URL_FIELDS:
        if isinstance(properties.get(key), str):
            properties[key] = redact_emails(properties[key])
    page = opt_obj(context, "page")
    for key in _PAGE_FIELDS:
        value = page.get(key)
        if key not in properties and isinstance(value, str) and value:
            properties[key] = redact_emails(value) if key in _URL_FIELDS else value
    campaign = context.get("campaign")
    if isinstance(campaign, dict) and campaign and "campaign" not in properties:
        # UTM parameters; `name` is utm_campaign here, not a person's name.
        utm = scrub_properties(campaign)
        if isinstance(campaign.get("name"), str):
            utm["name"] = redact_emails(campaign["name"])
        properties["campaign"] = utm
    if kind in ("page", "screen") and (name := opt_str(call, "name")):
        properties[f"{kind}_name"] = name
    if kind == "group" and (group_id := get_str(call, "groupId", "groupId")):
        properties["group_id"] = group_id

    value, currency = _money(raw_properties)
    return TouchpointFields(
        event_id=event_id,
        occurred_at=occurred_at,
        received_at=received_at,
        channel=Channel.WEB,
        source=NAME,
        action=action,
        identifiers=identifiers,
        properties=properties,
        # Most calls carry no traits at all.
        persona=_persona(traits, context_traits) if traits or context_traits else None,
        value=value,
        currency=currency,
    )


def _collect_identifiers(ids: Identifiers, values: tuple[Any, ...]) -> None:
    """A call's identifiers from the raw values `to_fields` gathers (all this reads, for the memo)."""
    (
        alias,
        user_id,
        anonymous_id,
        previous_id,
        has_traits,
        traits_email,
        traits_phone,
        has_context_traits,
        context_email,
        context_phone,
        has_device,
        device_id,
        external_ids,
    ) = values
    ids.plain("user_id", user_id, "userId")
    ids.plain("anonymous_id", anonymous_id, "anonymousId")
    if alias:
        ids.plain("anonymous_id", previous_id, "previousId")
    if has_traits:
        ids.email(traits_email, "traits.email")
        ids.phone(traits_phone, "traits.phone")
    if has_context_traits:
        ids.email(context_email, "context.traits.email")
        ids.phone(context_phone, "context.traits.phone")
    if has_device:
        ids.plain("device_id", device_id, "context.device.id")
    if external_ids is not None:
        extra_types = ids.context.extra_identifier_types
        for index, external in enumerate(external_ids):
            if isinstance(external, dict) and isinstance(external.get("type"), str):
                id_type = snake_case(external["type"])
                if id_type in extra_types:
                    ids.typed(id_type, external.get("id"), f"context.externalIds[{index}].id")


def _money(properties: dict[str, Any]) -> tuple[float | None, str | None]:
    value = None
    for key in _VALUE_KEYS:
        raw = properties.get(key)
        if raw is not None and (value := as_number(raw)) is not None:
            break
    if value is None:
        return None, None
    currency = properties.get("currency")
    if isinstance(currency, str):
        currency = currency.strip().upper()
        if len(currency) == 3 and currency.isascii() and currency.isalpha():
            return value, currency
    return value, None


def _persona(*sources: dict[str, Any]) -> str | None:
    for source in sources:
        persona = opt_str(source, "persona")
        if persona is not None and len(persona) <= 128:
            return persona
    return None


ADAPTER = Adapter(name=NAME, detect=detect, split=split, fields=to_fields)
