"""Identity stitching: which identifiers belong to one customer.

Pure domain code (no I/O). The identity graph is built from the identifiers that
touchpoints carry together; see `IdentityGraph` for the rules.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

# Values that real trackers emit when they have no identity; linking on them would
# merge thousands of strangers into one "customer".
DEFAULT_JUNK_VALUES: frozenset[str] = frozenset(
    {
        "",
        "null",
        "none",
        "nil",
        "undefined",
        "nan",
        "0",
        "-1",
        "guest",
        "anonymous",
        "unknown",
        "n/a",
        "na",
        "test",
        "[object object]",
    }
)
# Raw-value patterns (checked before PII hashing, in ingest) for test addresses and numbers.
DEFAULT_JUNK_PATTERNS: tuple[str, ...] = (
    r"^(test|noreply|no-reply|example|foo|bar)@",
    r"@(example|test|invalid|localhost)\.(com|org|net|nl)$",
    r"@(example|test|invalid|localhost)$",
    r"^\+?0+$",
    r"^\+?1?5550100$",
)


@dataclass(frozen=True)
class IdentityPolicy:
    """How identifiers may be linked. Configurable per deployment.

    - `unique_types`: a customer has at most one value of each of these types
      (default: `user_id`); a link that would give it a second is refused.
    - `junk_values` / `junk_patterns`: identifier values that never identify anyone.
    - `max_group_size`: a link that would grow a customer past this many
      identifiers is refused (a guard against super-nodes such as shared devices).
    - `priority`: when a touchpoint's identifiers sit in different customers (a
      refused link), the touchpoint belongs to the customer of the first
      identifier type in this order.
    """

    unique_types: frozenset[str] = frozenset({"user_id"})
    junk_values: frozenset[str] = DEFAULT_JUNK_VALUES
    junk_patterns: tuple[str, ...] = DEFAULT_JUNK_PATTERNS
    max_group_size: int = 50
    priority: tuple[str, ...] = (
        "user_id",
        "email",
        "phone",
        "social_handle",
        "device_id",
        "anonymous_id",
    )
    _compiled: tuple[re.Pattern[str], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        compiled = tuple(re.compile(pattern, re.IGNORECASE) for pattern in self.junk_patterns)
        object.__setattr__(self, "_compiled", compiled)

    def is_junk(self, value: str) -> bool:
        """True when a raw identifier value must never be used for stitching."""
        folded = value.strip().lower()
        if folded in self.junk_values:
            return True
        return any(pattern.search(folded) for pattern in self._compiled)

    def rank(self, identifier_type: str) -> int:
        """Lower is stronger; unknown types rank after all listed ones."""
        try:
            return self.priority.index(identifier_type)
        except ValueError:
            return len(self.priority)
