"""What every adapter needs besides the record itself: hashing, identity policy, clock."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import phonenumbers

from journeys.identity import IdentityPolicy
from journeys.touchpoint import BUILTIN_IDENTIFIER_TYPES, IDENTIFIER_TYPE_PATTERN

from .pii import DEFAULT_PHONE_REGION, PiiHasher

# Distinct keys an adapter memo holds before it starts over: about 600 bytes an
# entry (the raw values it keeps alive included), so about 10 MB when full. In
# the 200k demo, 1,024 entries already answer as often as 65,536 (a person's
# events come close together in an export); the stream interleaves more.
MEMO_SIZE = 16_384


class Memo(dict[Hashable, Any]):
    """A bounded memo for work that is a pure function of a key and the context it belongs to.

    Adapters keep the results of work that recurs per person (an event's
    identifiers: junk checks, normalising, keyed hashing) here, keyed by every raw
    value that work reads. It belongs to one `IngestContext`, since the answers
    depend on its hasher, policy and region. When full it starts over rather than
    grow: a 10M-event run meets millions of distinct keys. A dict, so a lookup
    (`get`) costs no Python call. Safe to share between threads: a race at worst
    computes an answer twice.
    """

    __slots__ = ("limit",)

    def __init__(self, limit: int = MEMO_SIZE) -> None:
        super().__init__()
        self.limit = limit

    def put(self, key: Hashable, value: Any) -> None:
        """Remember `value` (not None) for `key`, starting over when the memo is full."""
        if len(self) >= self.limit:
            self.clear()
        self[key] = value


def utc_now() -> datetime:
    """Wall-clock time in UTC at millisecond precision (the storage's); the default ingest clock.

    At milliseconds already, it is what the touchpoint keeps, with nothing left to convert per event.
    Read once per record, so the truncation subtracts a positional `timedelta`: the same
    datetime as `now.replace(microsecond=...)` at about half the cost (keyword arguments).
    """
    return to_millisecond(datetime.now(UTC))


def to_millisecond(moment: datetime) -> datetime:
    """`moment` truncated to the millisecond (as `moment.replace(microsecond=µs // 1000 * 1000)`)."""
    return moment - timedelta(0, 0, moment.microsecond % 1000)


@dataclass(frozen=True, slots=True)
class IngestContext:
    """Per-deployment settings for turning records into touchpoints.

    - `hasher`: keyed hashing of emails and phone numbers.
    - `policy`: its `is_junk` drops placeholder identifier values before hashing.
    - `extra_identifier_types`: identifier types beyond the built-in ones that
      config declares (e.g. `crm_contact_id`); Segment `context.externalIds` of
      other types are ignored.
    - `phone_region`: region for reading national phone numbers (`06 …` in NL).
    - `now`: the clock for `Touchpoint.received_at`; injectable for tests.
    - `memo`: the adapters' bounded memo of per-person work (identifiers), made
      fresh for every context (`dataclasses.replace` too), never passed in: its
      answers are only right for this context's hasher, policy and region.
    """

    hasher: PiiHasher
    policy: IdentityPolicy = field(default_factory=IdentityPolicy)
    extra_identifier_types: frozenset[str] = frozenset()
    phone_region: str = DEFAULT_PHONE_REGION
    now: Callable[[], datetime] = utc_now
    memo: Memo = field(init=False, repr=False, compare=False, default_factory=Memo)

    def __post_init__(self) -> None:
        object.__setattr__(self, "extra_identifier_types", frozenset(self.extra_identifier_types))
        region = self.phone_region.upper()
        if region not in phonenumbers.SUPPORTED_REGIONS:
            raise ValueError(f"phone_region {self.phone_region!r} is not a known region code")
        object.__setattr__(self, "phone_region", region)
        for name in self.extra_identifier_types:
            if not IDENTIFIER_TYPE_PATTERN.match(name):
                raise ValueError(f"extra identifier type {name!r} must be lower_snake_case, 1-64 characters")
            if name in BUILTIN_IDENTIFIER_TYPES:
                raise ValueError(f"extra identifier type {name!r} is built in; do not declare it")

    @classmethod
    def from_env(
        cls,
        *,
        policy: IdentityPolicy | None = None,
        extra_identifier_types: Iterable[str] = (),
        phone_region: str = DEFAULT_PHONE_REGION,
        environ: Mapping[str, str] | None = None,
    ) -> IngestContext:
        """A context whose PII key comes from `JOURNEYS_PII_KEY` / `JOURNEYS_PII_KEY_FILE`."""
        return cls(
            hasher=PiiHasher.from_env(environ),
            policy=policy or IdentityPolicy(),
            extra_identifier_types=frozenset(extra_identifier_types),
            phone_region=phone_region,
        )

    @classmethod
    def with_key(
        cls,
        key: bytes | str,
        *,
        policy: IdentityPolicy | None = None,
        extra_identifier_types: Iterable[str] = (),
        phone_region: str = DEFAULT_PHONE_REGION,
        now: Callable[[], datetime] = utc_now,
    ) -> IngestContext:
        """A context with an explicit PII key (demo, tests)."""
        return cls(
            hasher=PiiHasher(key),
            policy=policy or IdentityPolicy(),
            extra_identifier_types=frozenset(extra_identifier_types),
            phone_region=phone_region,
            now=now,
        )
