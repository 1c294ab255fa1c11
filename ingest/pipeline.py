"""Raw records in, touchpoints or dead letters out: one outcome per leaf record.

For each `RawRecord`:

1. A reader-level error (`record.error`) becomes a dead letter as is.
2. The bytes are parsed as JSON (orjson); a body that is not JSON but is a
   form-encoded Twilio callback is read as form fields; anything else is a
   dead letter `malformed JSON: …`.
3. A top-level JSON array is a list of records (a SendGrid webhook POST, or
   Meta's documented examples); each element is handled on its own.
4. The format is the explicit one (`format` argument, else `record.format`), or
   detected per object (`ingest.adapters.ADAPTERS`, in order). An explicit
   format that another adapter recognises the object as is a mismatch and is
   dead-lettered; an object nobody recognises goes to the chosen adapter so the
   reason names the missing field.
5. The adapter splits envelopes (Segment batch, Meta entries) and maps each
   leaf; a rejected leaf becomes a dead letter whose `raw` is the leaf itself
   (re-serialised when it was split out of a larger record).
6. A dead letter's `raw` has its personal data replaced (`pii.redact_record`):
   emails and phone numbers by their keyed hashes, names and the like by
   `<redacted>`, so the dead-letter store holds no raw PII either.

Every record yields at least one outcome (an empty array or batch is a dead
letter), so read = touchpoints + dead letters holds for callers that count.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
from typing import Any, TypeVar

import orjson

from journeys.touchpoint import Touchpoint, TouchpointFields

from .adapters import ADAPTERS, Adapter, Rejection
from .adapters.base import build_touchpoint, json_type, show
from .adapters.twilio import parse_form
from .context import IngestContext
from .pii import PiiKeyError, redact_record
from .records import DeadLetter, RawRecord

__all__ = [
    "FORMATS",
    "UNKNOWN_FORMAT",
    "IngestContext",
    "Outcome",
    "detect_format",
    "parse_records",
    "parse_records_with",
]

FORMATS: tuple[str, ...] = ("segment", "sendgrid", "twilio", "callcsv", "social", "meta")
UNKNOWN_FORMAT = "unknown"
Outcome = Touchpoint | DeadLetter
Built = TypeVar("Built")

assert set(FORMATS) == set(ADAPTERS), "FORMATS and ADAPTERS must list the same formats"


def detect_format(obj: Any) -> str | None:
    """The name of the first adapter that recognises a parsed JSON object, else None."""
    adapter = _detect(obj)
    return adapter.name if adapter is not None else None


def record_format(record: RawRecord) -> str | None:
    """The format of a raw record: its hint, else detected from its (first) object; None if unknown.

    For routing (which channel's topic a record goes to) before it is parsed
    properly; a record this cannot place is still parsed, and dead-lettered, downstream.
    """
    if record.format is not None:
        return record.format if record.format in ADAPTERS else None
    try:
        obj = orjson.loads(record.raw)
    except orjson.JSONDecodeError:
        obj = parse_form(record.raw)
    if isinstance(obj, list):
        obj = obj[0] if obj else None
    return detect_format(obj) if obj is not None else None


def parse_records(
    records: Iterable[RawRecord], context: IngestContext, format: str | None = None
) -> Iterator[Outcome]:
    """Turn raw records into touchpoints and dead letters, lazily and in order.

    `format` forces one format for every record (overriding `record.format`);
    None detects per record. An unknown `format` name is a programming error and
    raises `ValueError` here; a missing PII key raises `PiiKeyError` when the first
    email or phone number needs hashing. Nothing a record contains makes it raise.
    """
    return parse_records_with(records, context, build_touchpoint, format)


def parse_records_with(
    records: Iterable[RawRecord],
    context: IngestContext,
    build: Callable[[TouchpointFields], Built],
    format: str | None = None,
) -> Iterator[Built | DeadLetter]:
    """`parse_records` with each leaf's fields turned into an outcome by `build`.

    `build` validates (raising `Rejection` for fields that cannot be a
    touchpoint, like `ingest.adapters.base.build_touchpoint`, which
    `parse_records` uses) and may give another form than the model: the
    embedded run goes straight to the aggregate's compact, classified form.
    Everything else (decoding, detection, splitting, dead letters) is the same.
    """
    if format is not None and format not in ADAPTERS:
        raise ValueError(f"unknown format {format!r}; known formats: {', '.join(FORMATS)}")
    return _parse(records, context, format, build)


def _parse(
    records: Iterable[RawRecord],
    ctx: IngestContext,
    forced: str | None,
    build: Callable[[TouchpointFields], Built],
) -> Iterator[Built | DeadLetter]:
    # Lazy per record; a record's own outcomes (a batch's calls, a POST's events) come as one list.
    for record in records:
        yield from _record_outcomes(record, ctx, forced, build)


def _detect(obj: Any) -> Adapter | None:
    for adapter in ADAPTERS.values():
        if adapter.detect(obj):
            return adapter
    return None


def _record_outcomes(
    record: RawRecord, ctx: IngestContext, forced: str | None, build: Callable[[TouchpointFields], Built]
) -> list[Built | DeadLetter]:
    received_at = ctx.now()
    name = forced or record.format
    if record.error is not None:
        return [_letter(ctx, record.raw, record.error, name or UNKNOWN_FORMAT, record.origin, received_at)]
    adapter = None
    if name is not None:
        adapter = ADAPTERS.get(name)
        if adapter is None:
            reason = f"unknown format {show(name)}; known formats: {', '.join(FORMATS)}"
            return [_letter(ctx, record.raw, reason, UNKNOWN_FORMAT, record.origin, received_at)]
    try:
        obj = orjson.loads(record.raw)
    except orjson.JSONDecodeError as exc:
        form = parse_form(record.raw) if adapter is None or adapter.name == "twilio" else None
        if form is None:
            reason = f"malformed JSON: {exc}"
            if b"=" in record.raw and (adapter is None or adapter.name == "twilio"):
                reason += " (nor a Twilio form-encoded callback: no CallSid field)"
            return [_letter(ctx, record.raw, reason, name or UNKNOWN_FORMAT, record.origin, received_at)]
        obj = form
    out: list[Built | DeadLetter] = []
    if isinstance(obj, list):
        if not obj:
            reason = "empty JSON array: no records"
            return [_letter(ctx, record.raw, reason, name or UNKNOWN_FORMAT, record.origin, received_at)]
        for index, element in enumerate(obj):
            _object_outcomes(out, record, element, f"[{index}]", adapter, ctx, received_at, build)
    else:
        _object_outcomes(out, record, obj, "", adapter, ctx, received_at, build)
    return out


def _object_outcomes(
    out: list[Built | DeadLetter],
    record: RawRecord,
    obj: Any,
    path: str,
    adapter: Adapter | None,
    ctx: IngestContext,
    received_at: datetime,
    build: Callable[[TouchpointFields], Built],
) -> None:
    """Append the outcomes of one object (a record, or an element of a top-level array) to `out`."""
    if not isinstance(obj, dict):
        what = "a JSON array nested in an array" if isinstance(obj, list) else f"a JSON {json_type(obj)}"
        if adapter is None:
            reason, format_name = f"unrecognised format: {what}", UNKNOWN_FORMAT
        else:
            reason, format_name = f"not a {adapter.name} record: {what}", adapter.name
        out.append(_dead(ctx, record, path, obj, reason, format_name, received_at))
        return
    if adapter is None:
        adapter = _detect(obj)
        if adapter is None:
            reason = f"unrecognised format: {_describe(obj)}"
            out.append(_dead(ctx, record, path, obj, reason, UNKNOWN_FORMAT, received_at))
            return
    elif not adapter.detect(obj):
        other = _detect(obj)
        if other is not None:
            reason = f"not a {adapter.name} record (it looks like {other.name})"
            out.append(_dead(ctx, record, path, obj, reason, adapter.name, received_at))
            return
        # Nobody else claims it either: let the chosen adapter name what is missing.
    try:
        leaves = adapter.split(obj)
        if not isinstance(leaves, list | tuple):
            leaves = list(leaves)
    except Exception as exc:
        reason = f"internal error splitting a {adapter.name} record: {type(exc).__name__}"
        out.append(_dead(ctx, record, path, obj, reason, adapter.name, received_at))
        return
    fields = adapter.fields
    for leaf in leaves:
        leaf_path = f"{path}.{leaf.path}" if path and leaf.path else path or leaf.path
        if leaf.problem is not None:
            out.append(_dead(ctx, record, leaf_path, leaf.obj, leaf.problem, adapter.name, received_at))
            continue
        try:
            out.append(build(fields(leaf.obj, ctx, received_at)))
        except Rejection as rejection:
            out.append(_dead(ctx, record, leaf_path, leaf.obj, rejection.reason, adapter.name, received_at))
        except PiiKeyError:
            raise
        except Exception as exc:
            # A bug, not bad data; the type name only, as messages may quote the record.
            reason = f"internal error in the {adapter.name} adapter: {type(exc).__name__}"
            out.append(_dead(ctx, record, leaf_path, leaf.obj, reason, adapter.name, received_at))


def _dead(
    ctx: IngestContext,
    record: RawRecord,
    path: str,
    obj: Any,
    reason: str,
    format_name: str,
    received_at: datetime,
) -> DeadLetter:
    """A dead letter for (part of) a record: `path` locates the part (empty: the whole record)."""
    origin = f"{record.origin}#{path}" if path else record.origin
    return _letter(ctx, _leaf_raw(record, path, obj), reason, format_name, origin, received_at)


def _letter(
    ctx: IngestContext, raw: bytes, reason: str, format_name: str, origin: str, received_at: datetime
) -> DeadLetter:
    """The one place dead letters are made: personal data leaves the raw bytes here."""
    return DeadLetter(
        redact_record(raw, ctx.hasher, ctx.phone_region), reason, format_name, origin, received_at
    )


def _leaf_raw(record: RawRecord, path: str, obj: Any) -> bytes:
    """The record's own bytes for the whole record; the part re-serialised for a split-out leaf."""
    if not path:
        return record.raw
    try:
        return orjson.dumps(obj)
    except (TypeError, orjson.JSONEncodeError):
        return record.raw


def _describe(obj: dict[str, Any]) -> str:
    if not obj:
        return "an empty JSON object"
    keys = [show(key) for key in list(obj)[:6]]
    more = ", …" if len(obj) > 6 else ""
    return f"a JSON object with keys {', '.join(keys)}{more}"
