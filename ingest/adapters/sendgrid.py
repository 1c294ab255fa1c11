"""SendGrid Event Webhook events (a POST body is a JSON array of these; the pipeline splits it).

Every recipient event type becomes an email touchpoint whose action is the
SendGrid event name. `ip` is dropped; SMTP responses, bounce reasons and click
URLs have embedded email addresses redacted; unique/custom args are kept as
properties (minus personal-data keys), with `campaign` / `marketing_campaign_name`
mapped to `campaign`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from journeys.touchpoint import Channel, TouchpointFields

from ..context import IngestContext
from ..pii import is_pii_key, redact_emails, scrub_value
from .base import (
    Adapter,
    Identifiers,
    Rejection,
    as_int,
    get_str,
    json_type,
    opt_str,
    parse_epoch,
    remembered_identifiers,
    show,
    whole,
)

NAME = "sendgrid"
EVENT_TYPES: frozenset[str] = frozenset(
    {
        "processed",
        "delivered",
        "deferred",
        "bounce",
        "dropped",
        "open",
        "click",
        "spamreport",
        "unsubscribe",
        "group_unsubscribe",
        "group_resubscribe",
    }
)
# Provider fields mapped explicitly (or dropped on purpose); anything else is a
# unique/custom arg and is copied.
_MAPPED = frozenset(
    {
        "email",
        "timestamp",
        "event",
        "sg_event_id",
        "sg_message_id",
        "smtp-id",
        "category",
        "ip",
        "useragent",
        "url",
        "url_offset",
        "reason",
        "status",
        "type",
        "bounce_classification",
        "response",
        "attempt",
        "asm_group_id",
        "tls",
        "cert_err",
        "pool",
        "sg_machine_open",
        "sg_content_type",
        "sg_template_id",
        "sg_template_name",
        "campaign",
        "marketing_campaign_id",
        "marketing_campaign_name",
        "marketing_campaign_version",
        "marketing_campaign_split_id",
        "singlesend_id",
        "singlesend_name",
        "persona",
    }
)
# Free-text provider fields that can quote the recipient's address.
_REDACTED = (("reason", "reason"), ("response", "response"), ("url", "url"))
_COPIED = (
    ("status", "status"),
    ("type", "bounce_type"),
    ("bounce_classification", "bounce_classification"),
    ("useragent", "user_agent"),
    ("sg_message_id", "message_id"),
    ("sg_template_id", "template_id"),
    ("sg_template_name", "template_name"),
    ("marketing_campaign_id", "campaign_id"),
    ("singlesend_id", "singlesend_id"),
)


def detect(obj: Any) -> bool:
    """A SendGrid event: carries SendGrid's ids, or the event/email/timestamp trio."""
    if not isinstance(obj, dict):
        return False
    return (
        "sg_event_id" in obj
        or "sg_message_id" in obj
        or ("event" in obj and "email" in obj and "timestamp" in obj)
    )


split = whole


def to_fields(event: Any, ctx: IngestContext, received_at: datetime) -> TouchpointFields:
    """Map one SendGrid event to an email touchpoint."""
    if not isinstance(event, dict):
        raise Rejection(f"a SendGrid event must be an object, got {json_type(event)}")
    name = get_str(event, "event", "event", required=True)
    if name not in EVENT_TYPES:
        raise Rejection(f"event: {show(name)} is not a SendGrid recipient event")
    event_id = get_str(event, "sg_event_id", "sg_event_id", required=True)
    occurred_at = parse_epoch(event.get("timestamp"), "timestamp")
    identifiers = remembered_identifiers(ctx, (event.get("email"),), _collect_identifiers)

    properties: dict[str, Any] = {}
    category = event.get("category")
    if isinstance(category, str) and category.strip():
        properties["category"] = [category.strip()]
    elif isinstance(category, list):
        properties["category"] = [item for item in category if isinstance(item, str) and item]
    campaign = opt_str(event, "campaign") or opt_str(event, "marketing_campaign_name")
    if campaign is None:
        campaign = opt_str(event, "singlesend_name")
    if campaign is not None:
        properties["campaign"] = campaign
    # Most of these fields are absent from any one event: an absent one costs a lookup only.
    get = event.get
    for source, target in _COPIED:
        value = get(source)
        if value is not None and isinstance(value, str | int) and not isinstance(value, bool) and value != "":
            properties[target] = value
    for source, target in _REDACTED:
        value = get(source)
        if isinstance(value, str) and (value := value.strip()):
            properties[target] = redact_emails(value)
    if (attempt := get("attempt")) is not None and (attempt := as_int(attempt)) is not None:
        properties["attempt"] = attempt
    if (group := get("asm_group_id")) is not None and (group := as_int(group)) is not None:
        properties["asm_group_id"] = group
    if isinstance(get("sg_machine_open"), bool):
        properties["machine_open"] = event["sg_machine_open"]
    if not _MAPPED.issuperset(event):
        # Unique/custom args, in the event's order (rare; the set test is one C call).
        for key, value in event.items():
            if key not in _MAPPED and key not in properties and not is_pii_key(key):
                properties[key] = redact_emails(value) if isinstance(value, str) else scrub_value(value)

    persona = opt_str(event, "persona")
    return TouchpointFields(
        event_id=event_id,
        occurred_at=occurred_at,
        received_at=received_at,
        channel=Channel.EMAIL,
        source=NAME,
        action=name,
        identifiers=identifiers,
        properties=properties,
        persona=persona if persona is not None and len(persona) <= 128 else None,
    )


def _collect_identifiers(ids: Identifiers, values: tuple[Any, ...]) -> None:
    """An event's identifier (the recipient) from the raw value (all this reads, for the memo)."""
    (email,) = values
    ids.email(email, "email")


ADAPTER = Adapter(name=NAME, detect=detect, split=split, fields=to_fields)
