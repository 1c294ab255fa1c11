"""Meta Graph API webhooks: Facebook Pages (`object: page`) and Instagram (`object: instagram`).

A notification holds `entry[]`, each with `changes[]` (`field` + `value`) and/or
`messaging[]` (Messenger / Instagram messaging events). Every change and every
messaging item is one leaf; a split leaf is re-wrapped as a one-item envelope so
it stays a valid notification on its own (for detection and replay).

Mapping (`social_handle` = `facebook:<id>` / `instagram:<id>`, the app- or
page-scoped id Meta sends):

| source | action |
|---|---|
| page `feed`, item `comment` | `social.comment`, or `social.reply` when it answers another comment |
| page `feed`, items `status`/`post`/`photo`/`video`/`share`/`link` | `social.post` |
| page `feed`, items `reaction`/`like` | `social.reaction` |
| page `mention` | `social.mention` |
| instagram `comments` / `live_comments` | `social.comment`, or `social.reply` with a `parent_id` |
| instagram `mentions` | `social.mention` (Meta sends no author: dead-lettered, see below) |
| `messaging[]` / `messages` field with a `message` | `social.direct_message` |

Rejected with a reason: edits and removals (`verb` other than `add`), the
page's or account's own posts and comments, messaging events that are not
messages (deliveries, reads, postbacks), and Instagram `mentions`, whose
notification carries only media and comment ids — no author to attribute it to.
Text is never copied, only `text_length`.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Any

from journeys.touchpoint import Channel, TouchpointFields

from ..context import IngestContext
from .base import (
    Adapter,
    Identifiers,
    Leaf,
    Rejection,
    get_obj,
    get_str,
    json_type,
    opt_obj,
    opt_str,
    parse_epoch,
    parse_iso,
    show,
)

NAME = "meta"
PLATFORMS: dict[str, str] = {"page": "facebook", "instagram": "instagram"}
_POST_ITEMS = frozenset({"status", "post", "photo", "video", "share", "link"})
_REACTION_ITEMS = frozenset({"reaction", "like"})
_ITEM_LISTS = ("changes", "messaging")
_NON_MESSAGE_EVENTS = ("delivery", "read", "postback", "reaction", "referral", "optin", "message_edit")


def detect(obj: Any) -> bool:
    """A Meta notification: `object` is `page` or `instagram` and it has `entry`."""
    if not isinstance(obj, dict):
        return False
    kind = obj.get("object")
    return isinstance(kind, str) and kind in PLATFORMS and "entry" in obj


def _single_item(entry: Any) -> tuple[str, Any] | None:
    """The one change or messaging item of an entry, or None if it has zero or several."""
    if not isinstance(entry, dict):
        return None
    found: list[tuple[str, Any]] = []
    for key in _ITEM_LISTS:
        items = entry.get(key)
        if items is None:
            continue
        if not isinstance(items, list):
            return None
        found.extend((key, item) for item in items)
    if not found and "field" in entry and "value" in entry:
        # Some Instagram examples put `field`/`value` directly on the entry.
        found.append(("changes", {"field": entry["field"], "value": entry["value"]}))
    return found[0] if len(found) == 1 else None


def split(obj: Any) -> Iterator[Leaf]:
    """One leaf per change and per messaging item, each wrapped as a one-item notification."""
    entries = obj.get("entry")
    if not isinstance(entries, list):
        yield Leaf("", obj, f"entry: must be an array, got {json_type(entries)}")
        return
    if not entries:
        yield Leaf("", obj, "entry: holds no entries")
        return
    if len(entries) == 1 and _single_item(entries[0]) is not None:
        yield Leaf("", obj)
        return
    kind = obj.get("object")  # checked per leaf by to_fields, which names what is wrong
    for index, entry in enumerate(entries):
        path = f"entry[{index}]"
        if not isinstance(entry, dict):
            yield Leaf(path, entry, f"{path}: must be an object, got {json_type(entry)}")
            continue
        header = {key: entry[key] for key in ("id", "time") if key in entry}
        yielded = 0
        for key in _ITEM_LISTS:
            items = entry.get(key)
            if items is None:
                continue
            if not isinstance(items, list):
                yielded += 1
                yield Leaf(f"{path}.{key}", items, f"{path}.{key}: must be an array, got {json_type(items)}")
                continue
            for position, item in enumerate(items):
                yielded += 1
                yield Leaf(f"{path}.{key}[{position}]", {"object": kind, "entry": [{**header, key: [item]}]})
        if yielded:
            continue
        if "field" in entry and "value" in entry:
            change = {"field": entry["field"], "value": entry["value"]}
            yield Leaf(path, {"object": kind, "entry": [{**header, "changes": [change]}]})
        else:
            yield Leaf(path, entry, f"{path}: holds no changes or messaging")


def to_fields(notification: Any, ctx: IngestContext, received_at: datetime) -> TouchpointFields:
    """Map a one-item Meta notification to a social touchpoint."""
    if not isinstance(notification, dict):
        raise Rejection(f"a Meta notification must be an object, got {json_type(notification)}")
    kind = notification.get("object")
    if not isinstance(kind, str) or kind not in PLATFORMS:
        raise Rejection(f"object: {show(kind)} is not page or instagram")
    platform = PLATFORMS[kind]
    entries = notification.get("entry")
    single = _single_item(entries[0]) if isinstance(entries, list) and len(entries) == 1 else None
    if single is None:
        raise Rejection("entry: expected exactly one change or messaging item (split the notification first)")
    entry = entries[0]
    key, item = single
    if not isinstance(item, dict):
        raise Rejection(f"{key}[0]: must be an object, got {json_type(item)}")
    if key == "messaging":
        return _message(item, "messaging", entry, platform, ctx, received_at)
    field = get_str(item, "field", "field", required=True)
    value = get_obj(item, "value", "value")
    if field == "feed":
        return _feed(value, entry, platform, ctx, received_at)
    if field in ("comments", "live_comments"):
        return _instagram_comment(value, entry, platform, ctx, received_at)
    if field == "mentions":
        return _instagram_mention(value, entry, platform, ctx, received_at)
    if field == "mention":
        return _page_mention(value, entry, platform, ctx, received_at)
    if field == "messages":
        return _message(value, "value", entry, platform, ctx, received_at)
    raise Rejection(f"field: {show(field)} notifications are not supported")


def _customer(
    ids: Identifiers, ctx: IngestContext, platform: str, entry: dict[str, Any], raw: Any, field: str
) -> None:
    if isinstance(raw, int) and not isinstance(raw, bool):
        raw = str(raw)
    if raw is None or raw == "":
        ids.note(f"{field}: missing")
        return
    if not isinstance(raw, str):
        ids.note(f"{field}: must be a string, got {json_type(raw)}")
        return
    raw = raw.strip()
    if raw and raw == str(entry.get("id", "")).strip():
        raise Rejection(f"{field}: the page or account itself, not a customer")
    if ctx.policy.is_junk(raw):
        ids.note(f"{field}: placeholder value")
        return
    ids.plain("social_handle", f"{platform}:{raw}", field)


def _when(value: dict[str, Any], key: str, field: str, entry: dict[str, Any]) -> datetime:
    created = value.get(key)
    if created is not None and created != "":
        return (
            parse_iso(created, field)
            if isinstance(created, str) and "-" in created
            else parse_epoch(created, field)
        )
    if entry.get("time") is not None:
        return parse_epoch(entry["time"], "entry.time")
    raise Rejection(f"{field}: missing (and no entry.time)")


def _text_length(properties: dict[str, Any], text: Any) -> None:
    if isinstance(text, str):
        properties["text_length"] = len(text)


def _verb_is_add(value: dict[str, Any], required: bool) -> None:
    verb = get_str(value, "verb", "value.verb", required=required)
    if verb is not None and verb != "add":
        raise Rejection(f"value.verb: {show(verb)} changes an existing item; only 'add' is a new interaction")


def _touchpoint(
    event_id: str,
    occurred_at: datetime,
    received_at: datetime,
    action: str,
    ids: Identifiers,
    properties: dict[str, Any],
) -> TouchpointFields:
    return TouchpointFields(
        event_id=event_id,
        occurred_at=occurred_at,
        received_at=received_at,
        channel=Channel.SOCIAL,
        source=NAME,
        action=action,
        identifiers=ids.build(),
        properties=properties,
    )


def _feed(
    value: dict[str, Any], entry: dict[str, Any], platform: str, ctx: IngestContext, received_at: datetime
) -> TouchpointFields:
    item = get_str(value, "item", "value.item", required=True)
    _verb_is_add(value, required=True)
    post_id = get_str(value, "post_id", "value.post_id")
    comment_id = get_str(value, "comment_id", "value.comment_id")
    actor = opt_obj(value, "from").get("id")
    properties: dict[str, Any] = {"platform": platform, "item": item}
    if item == "comment":
        if comment_id is None:
            raise Rejection("value.comment_id: missing")
        parent_id = get_str(value, "parent_id", "value.parent_id")
        is_reply = parent_id is not None and parent_id != post_id
        action = "social.reply" if is_reply else "social.comment"
        event_id = f"facebook:comment:{comment_id}"
        if is_reply:
            properties["parent_id"] = parent_id
    elif item in _POST_ITEMS:
        if post_id is None:
            raise Rejection("value.post_id: missing")
        action = "social.post"
        event_id = f"facebook:post:{post_id}"
    elif item in _REACTION_ITEMS:
        target = comment_id or post_id
        if target is None:
            raise Rejection("value.post_id: missing")
        reaction = opt_str(value, "reaction_type") or "like"
        properties["reaction_type"] = reaction
        action = "social.reaction"
        event_id = f"facebook:reaction:{target}:{actor}:{reaction}"
    else:
        raise Rejection(f"value.item: {show(item)} feed items are not supported")
    occurred_at = _when(value, "created_time", "value.created_time", entry)
    ids = Identifiers(ctx)
    _customer(ids, ctx, platform, entry, actor, "value.from.id")
    if post_id is not None:
        properties["post_id"] = post_id
    _text_length(properties, value.get("message"))
    return _touchpoint(event_id, occurred_at, received_at, action, ids, properties)


def _instagram_comment(
    value: dict[str, Any], entry: dict[str, Any], platform: str, ctx: IngestContext, received_at: datetime
) -> TouchpointFields:
    comment_id = get_str(value, "id", "value.id", required=True)
    parent_id = get_str(value, "parent_id", "value.parent_id")
    occurred_at = _when(value, "timestamp", "value.timestamp", entry)
    ids = Identifiers(ctx)
    _customer(ids, ctx, platform, entry, opt_obj(value, "from").get("id"), "value.from.id")
    properties: dict[str, Any] = {"platform": platform}
    media = opt_obj(value, "media")
    media_id = get_str(media, "id", "value.media.id") if media else None
    if media_id is not None:
        properties["post_id"] = media_id
    if (product := opt_str(media, "media_product_type")) is not None:
        properties["media_product_type"] = product
    if parent_id is not None:
        properties["parent_id"] = parent_id
    _text_length(properties, value.get("text"))
    action = "social.reply" if parent_id is not None else "social.comment"
    return _touchpoint(f"{platform}:comment:{comment_id}", occurred_at, received_at, action, ids, properties)


def _instagram_mention(
    value: dict[str, Any], entry: dict[str, Any], platform: str, ctx: IngestContext, received_at: datetime
) -> TouchpointFields:
    comment_id = get_str(value, "comment_id", "value.comment_id")
    media_id = get_str(value, "media_id", "value.media_id")
    if comment_id is None and media_id is None:
        raise Rejection("value.media_id: missing (and no value.comment_id)")
    occurred_at = _when(value, "timestamp", "value.timestamp", entry)
    ids = Identifiers(ctx)
    author = opt_obj(value, "from").get("id")
    if author is None:
        ids.note("Instagram mentions notifications name no author (look it up via mentioned_comment)")
    else:
        _customer(ids, ctx, platform, entry, author, "value.from.id")
    properties: dict[str, Any] = {"platform": platform}
    if media_id is not None:
        properties["post_id"] = media_id
    event_id = f"{platform}:mention:{comment_id or media_id}"
    return _touchpoint(event_id, occurred_at, received_at, "social.mention", ids, properties)


def _page_mention(
    value: dict[str, Any], entry: dict[str, Any], platform: str, ctx: IngestContext, received_at: datetime
) -> TouchpointFields:
    _verb_is_add(value, required=False)
    post_id = get_str(value, "post_id", "value.post_id")
    comment_id = get_str(value, "comment_id", "value.comment_id")
    if post_id is None and comment_id is None:
        raise Rejection("value.post_id: missing (and no value.comment_id)")
    occurred_at = _when(value, "created_time", "value.created_time", entry)
    ids = Identifiers(ctx)
    _customer(ids, ctx, platform, entry, value.get("sender_id"), "value.sender_id")
    properties: dict[str, Any] = {"platform": platform}
    if post_id is not None:
        properties["post_id"] = post_id
    if (item := opt_str(value, "item")) is not None:
        properties["item"] = item
    event_id = f"{platform}:mention:{comment_id or post_id}"
    return _touchpoint(event_id, occurred_at, received_at, "social.mention", ids, properties)


def _message(
    item: dict[str, Any],
    prefix: str,
    entry: dict[str, Any],
    platform: str,
    ctx: IngestContext,
    received_at: datetime,
) -> TouchpointFields:
    message = item.get("message")
    if not isinstance(message, dict):
        other = next((key for key in _NON_MESSAGE_EVENTS if key in item), None)
        if other is not None:
            raise Rejection(f"{prefix}: {other} events are not touchpoints; only messages are")
        raise Rejection(f"{prefix}.message: must be an object, got {json_type(message)}")
    mid = get_str(message, "mid", f"{prefix}.message.mid", required=True)
    occurred_at = _when(item, "timestamp", f"{prefix}.timestamp", entry)
    echo = message.get("is_echo") is True
    # An echo is a message the business sent: the customer is its recipient.
    party = "recipient" if echo else "sender"
    ids = Identifiers(ctx)
    actor = get_obj(item, party, f"{prefix}.{party}").get("id")
    _customer(ids, ctx, platform, entry, actor, f"{prefix}.{party}.id")
    properties: dict[str, Any] = {"platform": platform, "direction": "outbound" if echo else "inbound"}
    _text_length(properties, message.get("text"))
    attachments = message.get("attachments")
    if isinstance(attachments, list) and attachments:
        properties["attachment_count"] = len(attachments)
    return _touchpoint(
        f"{platform}:message:{mid}", occurred_at, received_at, "social.direct_message", ids, properties
    )


ADAPTER = Adapter(name=NAME, detect=detect, split=split, fields=to_fields)
