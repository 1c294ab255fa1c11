"""Shared machinery for adapters: rejections, field access, time parsing, identifiers.

Adapter rule of thumb: fields the touchpoint cannot exist without (ids, event
time, event type, a customer identifier) are strict and reject the record with
a reason naming the field; optional descriptive fields that are unusable are
left out rather than costing a whole interaction.

Rejection reasons end up in dead letters, so they never quote values that may be
personal data: `show()` quotes only short, harmless-looking tokens.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, NamedTuple

from pydantic import ValidationError

from journeys.touchpoint import MAX_IDENTIFIER_VALUE_LENGTH, Touchpoint, TouchpointFields

from ..context import IngestContext
from ..pii import PiiError, normalise_phone

_SAFE_TOKEN = re.compile(r"[A-Za-z][A-Za-z0-9 _.:/\-]{0,47}")
_SMALL_NUMBER = re.compile(r"-?[0-9]{1,4}(?:\.[0-9]{1,4})?")
# Epoch values above this are milliseconds: as seconds they would be past the year 5000.
_EPOCH_MS_THRESHOLD = 100_000_000_000


class Rejection(Exception):
    """A leaf record that cannot become a touchpoint. `reason` is safe to store and log."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Leaf(NamedTuple):
    """One leaf record split out of an envelope.

    `path` locates it inside the record (`batch[3]`, `entry[0].changes[1]`; empty
    for the record itself). `problem` is set when this part of the envelope is
    broken and can only be dead-lettered.
    """

    path: str
    obj: Any
    problem: str | None = None


@dataclass(frozen=True, slots=True)
class Adapter:
    """One provider format: how to recognise it, split it, and map a leaf.

    `fields` maps a leaf to a touchpoint's fields (raising `Rejection` for a
    leaf that cannot be one); validating them is the caller's choice
    (`to_touchpoint` for the model).
    """

    name: str
    detect: Callable[[Any], bool]
    split: Callable[[Any], Iterable[Leaf]]
    fields: Callable[[Any, IngestContext, datetime], TouchpointFields]

    def to_touchpoint(self, obj: Any, ctx: IngestContext, received_at: datetime) -> Touchpoint:
        """Map one leaf to a validated touchpoint."""
        return build_touchpoint(self.fields(obj, ctx, received_at))


def whole(obj: Any) -> tuple[Leaf]:
    """`split` for formats without envelopes: the record is its own single leaf."""
    return (Leaf("", obj),)


def json_type(value: Any) -> str:
    """The JSON name of a value's type, for reasons like 'must be a string, got array'."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def show(value: Any) -> str:
    """Quote a value in a reason only if it is a short token that cannot be personal data.

    Words (`'transferred'`) and small numbers (`'7'`, `2`, `-3.5`) are quoted; anything
    with five or more digits (phone numbers, ids) or other characters is described.
    """
    if isinstance(value, str):
        if (_SAFE_TOKEN.fullmatch(value) or _SMALL_NUMBER.fullmatch(value)) and sum(
            c.isdigit() for c in value
        ) < 5:
            return repr(value)
        return f"a {len(value)}-character string"
    if isinstance(value, int | float) and not isinstance(value, bool):
        text = repr(value)
        if _SMALL_NUMBER.fullmatch(text) and sum(c.isdigit() for c in text) < 5:
            return text
    return f"a JSON {json_type(value)}"


def get_obj(container: dict[str, Any], key: str, field: str) -> dict[str, Any]:
    """A nested object, `{}` when absent; a rejection when it is some other type."""
    value = container.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise Rejection(f"{field}: must be an object, got {json_type(value)}")
    return value


def opt_obj(container: dict[str, Any], key: str) -> dict[str, Any]:
    """A nested object for optional descriptive data: `{}` when absent or not an object."""
    value = container.get(key)
    return value if isinstance(value, dict) else {}


def get_str(container: dict[str, Any], key: str, field: str, *, required: bool = False) -> str | None:
    """A stripped string (integers accepted as ids); None when absent or blank unless required."""
    value = container.get(key)
    if isinstance(value, str):
        value = value.strip()
        if value:
            return value
    elif isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    elif value is not None:
        raise Rejection(f"{field}: must be a string, got {json_type(value)}")
    if required:
        raise Rejection(f"{field}: missing")
    return None


def opt_str(container: dict[str, Any], key: str) -> str | None:
    """A stripped non-empty string for optional descriptive data, else None."""
    value = container.get(key)
    if isinstance(value, str):
        value = value.strip()
        return value or None
    return None


def as_number(value: Any) -> float | None:
    """A finite number from a JSON number or a numeric string, else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            return None
    else:
        return None
    return number if math.isfinite(number) else None


def as_int(value: Any) -> int | None:
    """A whole number from a JSON number or numeric string (`"5"`, `5.0`), else None."""
    number = as_number(value)
    if number is None or not number.is_integer():
        return None
    return int(number)


def parse_iso(value: Any, field: str) -> datetime:
    """An ISO-8601 timestamp with a time zone; naive timestamps are rejected, not guessed."""
    if value is None or value == "":
        raise Rejection(f"{field}: missing")
    if not isinstance(value, str):
        raise Rejection(f"{field}: must be an ISO-8601 string, got {json_type(value)}")
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        raise Rejection(f"{field}: not an ISO-8601 timestamp") from None
    if parsed.tzinfo is None or parsed.utcoffset() is None:
        raise Rejection(f"{field}: timestamp must carry a time zone")
    return _to_utc(parsed, field)


def _to_utc(parsed: datetime, field: str) -> datetime:
    # Converting here (not only in the Touchpoint model) turns the OverflowError of
    # `0001-01-01T00:00:00+01:00` into a reason instead of an internal error.
    try:
        return parsed.astimezone(UTC)
    except (OverflowError, ValueError):
        raise Rejection(f"{field}: timestamp out of range") from None


def parse_epoch(value: Any, field: str) -> datetime:
    """Unix time in seconds or milliseconds (told apart by magnitude), as UTC."""
    if value is None or value == "":
        raise Rejection(f"{field}: missing")
    number = as_number(value)
    if number is None:
        raise Rejection(f"{field}: must be a Unix timestamp, got {show(value)}")
    if abs(number) >= _EPOCH_MS_THRESHOLD:
        number /= 1000.0
    try:
        return datetime.fromtimestamp(number, UTC)
    except (OverflowError, OSError, ValueError):
        raise Rejection(f"{field}: Unix timestamp out of range") from None


def parse_rfc2822(value: Any, field: str) -> datetime:
    """An RFC 2822 date (`Mon, 16 Aug 2010 03:45:01 +0000`); ISO-8601 is accepted too."""
    if value is None or value == "":
        raise Rejection(f"{field}: missing")
    if not isinstance(value, str):
        raise Rejection(f"{field}: must be an RFC 2822 date string, got {json_type(value)}")
    try:
        parsed = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        try:
            parsed = datetime.fromisoformat(value.strip())
        except ValueError:
            raise Rejection(f"{field}: not an RFC 2822 date") from None
    else:
        if parsed.tzinfo is None and value.rstrip().endswith("-0000"):
            # RFC 2822 section 3.3: `-0000` is UTC (with the sender's zone unknown).
            parsed = parsed.replace(tzinfo=UTC)
    if parsed.tzinfo is None or parsed.utcoffset() is None:
        raise Rejection(f"{field}: timestamp must carry a time zone")
    return _to_utc(parsed, field)


class Identifiers:
    """Collects a touchpoint's identifiers: junk dropped, PII normalised and hashed, duplicates merged.

    Unusable values are noted, not fatal: a page view with a junk `userId` but a
    good `anonymousId` is still a page view. Only when nothing usable is left does
    `build()` reject the record, listing what was wrong with each candidate.
    """

    __slots__ = ("_absent", "_ctx", "_items", "_problems")

    def __init__(self, ctx: IngestContext) -> None:
        self._ctx = ctx
        self._items: dict[tuple[str, str], None] = {}
        self._problems: list[str] = []
        self._absent: list[str] = []

    @property
    def context(self) -> IngestContext:
        """The ingest context the identifiers are checked and hashed under."""
        return self._ctx

    def _text(self, value: Any, field: str) -> str | None:
        if isinstance(value, str):
            value = value.strip()
        elif isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        elif value is not None:
            self._problems.append(f"{field}: must be a string, got {json_type(value)}")
            return None
        if not value:
            self._absent.append(field)
            return None
        if self._ctx.policy.is_junk(value):
            self._problems.append(f"{field}: placeholder value")
            return None
        return value

    def plain(self, type_: str, value: Any, field: str) -> None:
        """A non-PII identifier (user id, anonymous id, device id, handle).

        Values that are really email addresses (`userId: "jen@email.com"` is common)
        are hashed like emails, so they neither leak nor stop linking.
        """
        text = self._text(value, field)
        if text is None:
            return
        if "@" in text:
            with contextlib.suppress(PiiError):
                text = self._ctx.hasher.hash_email(text)
        if len(text) > MAX_IDENTIFIER_VALUE_LENGTH:
            self._problems.append(f"{field}: longer than {MAX_IDENTIFIER_VALUE_LENGTH} characters")
            return
        self._items[(type_, text)] = None

    def email(self, value: Any, field: str) -> None:
        """An email address, stored as the keyed hash of its normalised form."""
        text = self._text(value, field)
        if text is None:
            return
        try:
            self._items[("email", self._ctx.hasher.hash_email(text))] = None
        except PiiError as exc:
            self._problems.append(f"{field}: {exc}")

    def phone(self, value: Any, field: str) -> None:
        """A phone number, stored as the keyed hash of its E.164 form."""
        text = self._text(value, field)
        if text is None:
            return
        try:
            normalised = normalise_phone(text, self._ctx.phone_region)
        except PiiError as exc:
            self._problems.append(f"{field}: {exc}")
            return
        if self._ctx.policy.is_junk(normalised):
            self._problems.append(f"{field}: placeholder value")
            return
        self._items[("phone", self._ctx.hasher.hash(normalised))] = None

    def typed(self, type_: str, value: Any, field: str) -> None:
        """An identifier of a configured type; `email`/`phone` go through hashing."""
        if type_ == "email":
            self.email(value, field)
        elif type_ == "phone":
            self.phone(value, field)
        else:
            self.plain(type_, value, field)

    def note(self, problem: str) -> None:
        """Record why a candidate identifier was not used (shown if none is usable)."""
        self._problems.append(problem)

    def build(self) -> tuple[tuple[str, str], ...]:
        """The identifiers as (type, value) pairs in the order found; rejects when none is usable."""
        if not self._items:
            details = list(self._problems)
            if self._absent:
                details.append(f"{', '.join(self._absent)}: missing")
            detail = f": {'; '.join(details)}" if details else ""
            raise Rejection(f"no usable identifier{detail}")
        return tuple(self._items)


Collect = Callable[[Identifiers, tuple[Any, ...]], None]


def memo_key(values: tuple[Any, ...]) -> tuple[Any, ...] | None:
    """`values` as a memo key when each is a string, a boolean or None; else None (no memo).

    Numbers are left out on purpose: `True == 1 == 1.0` as keys, yet they get
    different answers (`must be a string, got boolean`, `'1'`, `got number`);
    among strings, booleans and None, equal keys are the same values. Arrays
    and objects cannot be keys at all.
    """
    for value in values:
        if value is not None and type(value) is not str and type(value) is not bool:
            return None
    return values


def remembered_identifiers(
    ctx: IngestContext, values: tuple[Any, ...], collect: Collect
) -> tuple[tuple[str, str], ...]:
    """`collect(ids, values)` then `ids.build()`, remembered in `ctx.memo` per `(collect, values)`.

    The same person's identifiers recur across many events, and the work on
    them (placeholder checks, normalising, keyed hashing, the reason when none is
    usable) costs as much as the rest of a small event's mapping. `values` holds
    every raw value `collect` reads and `collect` reads nothing else (it is handed
    `values`, not the record), so an answer depends on the key alone and the memo
    is exact. A rejection is remembered as its reason and raised again on a hit.
    A missing PII key (`PiiKeyError`) is raised and nothing is remembered.
    """
    key = memo_key(values)
    if key is None:
        ids = Identifiers(ctx)
        collect(ids, values)
        return ids.build()
    memo = ctx.memo
    key = (collect, key)
    found = memo.get(key)
    if found is None:
        ids = Identifiers(ctx)
        collect(ids, values)
        try:
            found = ids.build()
        except Rejection as rejection:
            found = rejection.reason
        memo.put(key, found)
    if type(found) is str:
        raise Rejection(found)
    return found


def readable(exc: ValidationError) -> str:
    """Pydantic errors as short reasons: `occurred_at: timestamp must carry a time zone`."""
    parts = []
    for error in exc.errors(include_url=False, include_input=False, include_context=False)[:3]:
        location = ".".join(str(part) for part in error["loc"]) or "touchpoint"
        message = error["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
        parts.append(f"{location}: {message}")
    more = exc.error_count() - len(parts)
    if more > 0:
        parts.append(f"and {more} more")
    return "; ".join(parts)


def build_touchpoint(fields: TouchpointFields) -> Touchpoint:
    """Validate once into a Touchpoint; validation errors become a readable rejection."""
    try:
        return Touchpoint.from_fields(fields)
    except ValidationError as exc:
        raise Rejection(readable(exc)) from None
