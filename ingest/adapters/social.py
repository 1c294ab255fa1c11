"""The social-listening export (docs/ingest.md): `{"schema": "journeys.social/v1", ...}`.

The customer is `social_handle` = `<platform>:<handle>` (lower-cased, leading
`@` dropped), plus `user_id` / `email` when the social tool knows them. Message
text is never copied; only its length is.
"""

from __future__ import annotations

import re
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
    opt_str,
    parse_iso,
    show,
    whole,
)

NAME = "social"
SCHEMA = "journeys.social/v1"
SCHEMA_PREFIX = "journeys.social/"
KINDS: frozenset[str] = frozenset({"mention", "comment", "reply", "direct_message"})
_PLATFORM = re.compile(r"[a-z][a-z0-9_\-]{0,31}")


def detect(obj: Any) -> bool:
    """A social record: its `schema` names the journeys.social format (any version)."""
    if not isinstance(obj, dict):
        return False
    schema = obj.get("schema")
    return isinstance(schema, str) and schema.startswith(SCHEMA_PREFIX)


split = whole


def to_fields(record: Any, ctx: IngestContext, received_at: datetime) -> TouchpointFields:
    """Map one social record to a social touchpoint."""
    if not isinstance(record, dict):
        raise Rejection(f"a social record must be an object, got {json_type(record)}")
    schema = record.get("schema")
    if schema != SCHEMA:
        raise Rejection(f"schema: {show(schema)} is not supported; this build reads {SCHEMA}")
    event_id = get_str(record, "id", "id", required=True)
    kind = get_str(record, "kind", "kind", required=True)
    if kind not in KINDS:
        raise Rejection(f"kind: {show(kind)} is not mention, comment, reply or direct_message")
    platform = (get_str(record, "platform", "platform", required=True) or "").lower()
    if not _PLATFORM.fullmatch(platform):
        raise Rejection(
            f"platform: {show(platform)} is not a platform name (lower-case letters, digits, _ or -)"
        )
    occurred_at = parse_iso(record.get("occurred_at"), "occurred_at")

    ids = Identifiers(ctx)
    handle = get_str(record, "handle", "handle")
    if handle is not None:
        handle = handle.lstrip("@").lower()
        if handle and not ctx.policy.is_junk(handle):
            ids.plain("social_handle", f"{platform}:{handle}", "handle")
        else:
            ids.note("handle: placeholder value")
    ids.plain("user_id", record.get("user_id"), "user_id")
    ids.email(record.get("email"), "email")
    identifiers = ids.build()

    properties: dict[str, Any] = {"platform": platform}
    for key in ("post_id", "in_reply_to"):
        value = get_str(record, key, key)
        if value is not None:
            properties[key] = value
    text = record.get("text")
    if isinstance(text, str):
        properties["text_length"] = len(text)
    elif text is not None:
        raise Rejection(f"text: must be a string, got {json_type(text)}")

    sentiment = None
    raw_sentiment = record.get("sentiment")
    if raw_sentiment is not None:
        sentiment = as_number(raw_sentiment)
        if sentiment is None or not -1.0 <= sentiment <= 1.0:
            raise Rejection(f"sentiment: must be a number from -1 to 1, got {show(raw_sentiment)}")
    persona = opt_str(record, "persona")

    return TouchpointFields(
        event_id=event_id,
        occurred_at=occurred_at,
        received_at=received_at,
        channel=Channel.SOCIAL,
        source=NAME,
        action=f"social.{kind}",
        identifiers=identifiers,
        properties=properties,
        sentiment=sentiment,
        persona=persona if persona is not None and len(persona) <= 128 else None,
    )


ADAPTER = Adapter(name=NAME, detect=detect, split=split, fields=to_fields)
