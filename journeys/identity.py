"""Identity stitching: which identifiers belong to one customer.

Pure domain code (no I/O). The identity graph is built from the identifiers that
touchpoints carry together; see `IdentityGraph` for the rules.
"""

from __future__ import annotations

import hashlib
import re
from array import array
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import TypeVar

from journeys.store import EventIds

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


_VERDICT_CACHE_SIZE = 100_000  # bounded: a long run sees millions of anonymous ids
_USABLE_CACHE_SIZE = 1 << 17  # identifier tuples (per device or person) whose usable keys are memoised


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
    _verdicts: dict[str, bool] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # One alternation is searched much faster than N patterns (is_junk runs for
        # every identifier of every touchpoint); patterns that cannot be combined
        # (e.g. inline global flags) keep one compiled pattern each.
        try:
            combined = "|".join(f"(?:{pattern})" for pattern in self.junk_patterns)
            compiled = (re.compile(combined, re.IGNORECASE),) if self.junk_patterns else ()
        except re.error:
            compiled = tuple(re.compile(pattern, re.IGNORECASE) for pattern in self.junk_patterns)
        object.__setattr__(self, "_compiled", compiled)
        # Value -> is_junk: ingest asks about the same device and user ids for every event.
        object.__setattr__(self, "_verdicts", {})

    def is_junk(self, value: str) -> bool:
        """True when a raw identifier value must never be used for stitching."""
        verdict = self._verdicts.get(value)
        if verdict is None:
            folded = value.strip().lower()
            verdict = folded in self.junk_values or any(p.search(folded) is not None for p in self._compiled)
            if len(self._verdicts) >= _VERDICT_CACHE_SIZE:
                self._verdicts.clear()
            self._verdicts[value] = verdict
        return verdict

    def rank(self, identifier_type: str) -> int:
        """Lower is stronger; unknown types rank after all listed ones."""
        try:
            return self.priority.index(identifier_type)
        except ValueError:
            return len(self.priority)


# ---------------------------------------------------------------------------
# The identity graph
# ---------------------------------------------------------------------------

Key = tuple[str, str]
"""An identifier key: (type, value), as `Identifier.key` gives it."""

Observation = tuple[str, datetime, Sequence[Key]]
"""(event_id, occurred_at, identifier keys) of one touchpoint."""

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_NO_ROW = array("i", [-1])
_FIRST_KEY_SLOTS = 1 << 6  # slots of the identifier table to begin with (a power of two)


def micros(moment: datetime) -> int:
    """An aware datetime as whole microseconds since the epoch (exact; orders as the datetimes do)."""
    return (moment - _EPOCH) // _MICROSECOND


def from_micros(value: int) -> datetime:
    """The UTC datetime of `micros` (equal to the one it came from)."""
    return _EPOCH + timedelta(0, 0, value)


@lru_cache(maxsize=1 << 16)
def customer_id_for(identifier: Key) -> str:
    """The customer id of a group whose oldest identifier is `identifier`."""
    identifier_type, value = identifier
    digest = hashlib.sha256(f"{identifier_type}\x1f{value}".encode()).hexdigest()
    return "cus_" + digest[:16]


@dataclass(frozen=True, slots=True)
class IdentityMerge:
    """Two existing customers became one: `absorbed_customer_id` now lives on as
    `surviving_customer_id` (the group with the oldest identifier survives).

    `identifiers` is the accepted link that caused it: (identifier, anchor), where
    the anchor is the strongest identifier of the touchpoint `event_id`.
    """

    event_id: str
    occurred_at: datetime
    surviving_customer_id: str
    absorbed_customer_id: str
    identifiers: tuple[Key, Key]


@dataclass(frozen=True, slots=True)
class IdentityConflict:
    """A link the policy refused; the two customers stay apart.

    `identifiers` is the refused link (identifier, anchor); `customer_ids` are the
    customers of those two identifiers at that point in event time. `reason` is
    `unique_type:<type>` or `group_size_cap`.
    """

    event_id: str
    occurred_at: datetime
    identifiers: tuple[Key, Key]
    customer_ids: tuple[str, str]
    reason: str


class IdentityGraph:
    """Which identifiers belong to one customer: a deterministic fold over observations.

    Rules (the state is *defined* as this fold over the observations sorted by
    (occurred_at, event_id); arrival order never matters):

    - Junk values (`policy.is_junk`) are dropped. Every other identifier is a node,
      first seen at the earliest observation that carries it.
    - Star linking: a touchpoint links each of its identifiers to its strongest one
      (the anchor: lowest `policy.rank`, then type, then value), in that order.
      Star rather than pairwise keeps n-1 links per touchpoint and makes the
      strongest identifier (usually `user_id`) the one the others must agree with.
    - A link is refused (an `IdentityConflict`) when the two groups hold different
      values of a unique type, or when together they would exceed
      `policy.max_group_size`.
    - A group's customer id derives from its oldest identifier (first seen, then
      type and value), so the oldest customer survives every merge.
    - An accepted link between two groups that both existed before the touchpoint
      is an `IdentityMerge`; identifiers first seen in that same touchpoint simply
      join (they were never a customer of their own).
    - `unlink(identifier)` removes an identifier from all linking, past and future:
      it stands alone as its own customer.

    Incremental evaluation. Besides the union-find of accepted links the graph
    keeps a second union-find over *observed* links (accepted or refused). Its
    components are independent: the fold restricted to one component only reads
    observations inside it. An observation whose (occurred_at, event_id) is later
    than every observation of the components it touches is applied directly
    (in-order streaming: O(k log k) for its k identifiers plus O(α) finds per link).
    A late observation, or a late first sighting of an identifier that sits in a
    component, replays exactly that component from scratch in event-time order:
    O(E log E + I) for its E observations and I identifiers; other components are
    untouched. A component only grows large through refused links (a super-node
    such as a shared device); `unlink` it and it leaves the component.

    Change tracking: `drain_changes()` reports every identifier whose customer
    differs from the previous drain, with old and new customer ids. Cost is
    proportional to the identifiers reported.

    Memory: per identifier its key (the touchpoints' own tuple), one or two
    slots of the open-addressing table that finds it, and eleven numbers in
    flat arrays (first sighting as microseconds and the row of its event, the
    two union-finds with sizes, member ring and oldest member, the replay
    component's event list ends, count and latest event); per group of two or
    more with a unique-type value one dict entry. Events are rows of an
    `EventIds` table and a column of their times in microseconds (the
    aggregate's own, shared, or the graph's): per touchpoint with two or more
    linkable identifiers one entry in an `array('i')` pool (the next event of
    its replay component, the node count and the node ids) and a 4-byte pool
    offset per row; single-identifier touchpoints are not stored (redelivering
    them is idempotent anyway). An event id is decoded only where an order
    between two events of the same microsecond, or a merge or conflict
    record, needs it.
    `members`/`customers` build an index on demand (O(identifiers) after a change):
    they serve inspection, not the per-event path. Event ids identify observations:
    a redelivered event id is assumed to carry the same content.
    """

    __slots__ = (
        "_conflict_log",
        "_conflict_view",
        "_events",
        "_first_at",
        "_first_row",
        "_hcount",
        "_hhead",
        "_hmax",
        "_hparent",
        "_htail",
        "_key_mask",
        "_key_slots",
        "_keys",
        "_known",
        "_member_index",
        "_merge_log",
        "_merge_view",
        "_next",
        "_obs_at",
        "_oldest",
        "_own_events",
        "_parent",
        "_pending",
        "_pool",
        "_ranks",
        "_size",
        "_times",
        "_track",
        "_uniq",
        "_unlinked",
        "_usable",
        "_version",
        "policy",
    )

    def __init__(
        self,
        policy: IdentityPolicy | None = None,
        *,
        unlinked: Iterable[Key] = (),
        track_changes: bool = True,
        events: EventIds | None = None,
        times: array[int] | None = None,
    ) -> None:
        """`events` and `times`: the event id table whose rows `observe_row` names and the
        occurred_at of each row in microseconds since the epoch (`array('q')`): the aggregate's,
        shared so that each is kept once; without them the graph keeps its own for `observe`."""
        if (events is None) != (times is None):
            raise ValueError("share both the event id table and its times, or neither")
        self.policy = policy if policy is not None else IdentityPolicy()
        self._ranks: dict[str, int] = {}  # identifier type -> policy.rank, memoised
        # A touchpoint's identifier tuple -> its usable identifiers, strongest first (memoised: a
        # device or person sends the same set again and again, and the answer never changes).
        self._usable: dict[tuple[Key, ...], tuple[Key, ...]] = {}
        self._own_events = events is None
        self._events = EventIds() if events is None else events
        self._times: array[int] = array("q") if times is None else times
        # Nodes: identifier <-> dense int id; per-node data in flat arrays (no int object per entry).
        self._keys: list[Key] = []
        # Identifier -> node: an open-addressing table of nodes (linear probing, at most two thirds
        # full) over _keys. A dict and an int object per node took about 70 bytes; this 6 to 12.
        self._key_slots = array("i", [-1]) * _FIRST_KEY_SLOTS
        self._key_mask = _FIRST_KEY_SLOTS - 1
        self._first_at = array("q")  # first sighting: microseconds since the epoch
        self._first_row = array("i")  # ... and the row of its event (ties in time: by event id)
        # Accepted links: union-find (union by size) + circular member lists.
        self._parent = array("i")
        self._size = array("i")
        self._next = array("i")
        self._oldest = array("i")  # group rep -> oldest member (the node itself for a singleton)
        self._uniq: dict[int, dict[str, str]] = {}  # group rep -> unique-type values
        # Observed links (accepted or refused): union-find over replay components, each with its
        # linking events as a list chained through the pool (head and tail rows, count, latest).
        self._hparent = array("i")
        self._hhead = array("i")
        self._htail = array("i")
        self._hcount = array("i")
        self._hmax = array("i")  # component rep -> row of its latest event (-1: no events)
        # Linking events: row -> offset of [next row of its component, n, *nodes] in the pool.
        self._obs_at = array("i")  # -1 (or past the end): not a linking event
        self._pool = array("i")
        self._unlinked: set[Key] = set(unlinked)
        # Logs per event row, plus event-time ordered views built lazily.
        self._merge_log: dict[int, list[IdentityMerge]] = {}
        self._conflict_log: dict[int, list[IdentityConflict]] = {}
        self._merge_view: list[IdentityMerge] | None = []
        self._conflict_view: list[IdentityConflict] | None = []
        # Change tracking: node -> customer root at the last drain, for nodes older than it (`_known`:
        # the node count then). Nodes since are new by their number, so a run that never drains
        # (the embedded one) keeps no entry per identifier.
        self._track = track_changes
        self._pending: dict[int, int] = {}
        self._known = 0
        self._version = 0
        self._member_index: tuple[int, dict[str, int]] | None = None

    # -- building -------------------------------------------------------------

    @classmethod
    def rebuild(
        cls,
        observations: Iterable[Observation],
        unlinks: Iterable[Key] = (),
        policy: IdentityPolicy | None = None,
        *,
        track_changes: bool = True,
    ) -> IdentityGraph:
        """Fold a set of observations (and unlinks) from scratch, in event-time order.

        The result has no pending changes. Incremental use must always equal this.
        """
        graph = cls(policy, unlinked=unlinks, track_changes=False)
        for event_id, occurred_at, identifiers in sorted(observations, key=lambda o: (o[1], o[0])):
            graph.observe(event_id, occurred_at, identifiers)
        graph._track = track_changes
        return graph

    def observe(self, event_id: str, occurred_at: datetime, identifiers: Sequence[Key]) -> bool:
        """Add the identifiers one touchpoint carries together; idempotent per event_id.

        Returns False when none of them is usable (all junk): such a touchpoint
        belongs to nobody, and the caller must refuse it rather than keep it.
        """
        row = self._events.row_of(event_id)
        if row is not None and self._entry(row) >= 0:
            return True
        usable = self._usable_keys(identifiers)
        if not usable:
            return False
        if row is None:
            if not self._own_events:
                raise KeyError(f"{event_id!r} is not in the shared event id table: use observe_row")
            row = self._events.append(event_id)
            self._times.append(micros(occurred_at))
        self.observe_row(row, usable)
        return True

    def usable(self, identifiers: Sequence[Key]) -> tuple[Key, ...]:
        """The identifiers `observe_row` would use, strongest first; empty: nobody to attribute to."""
        return self._usable_keys(identifiers)

    def observe_row(self, row: int, usable: tuple[Key, ...]) -> None:
        """`observe` for an event already in the event id table and its times, by row: `usable`
        is what `usable(identifiers)` gave (not empty)."""
        if self._entry(row) >= 0:
            return
        occurred_micros = self._times[row]
        events, keys, slots, mask = self._events, self._keys, self._key_slots, self._key_mask
        self._version += 1
        first_at, first_row = self._first_at, self._first_row
        lowered: list[int] = []
        linkable: list[int] = []
        for key in usable:
            slot = hash(key) & mask  # its node: `_node_of`, inline (once per identifier per event)
            while True:
                node = slots[slot]
                if node < 0 or keys[node] == key:
                    break
                slot = (slot + 1) & mask
            if node < 0:
                node = self._add_node(key, occurred_micros, row)
                slots, mask = self._key_slots, self._key_mask  # it may have grown
            elif occurred_micros < first_at[node] or (
                occurred_micros == first_at[node] and events[row] < events[first_row[node]]
            ):
                # Seen earlier than we knew; in event time it may now join a group
                # as a newcomer (no merge record), so track its change here.
                self._remember(node)
                first_at[node] = occurred_micros
                first_row[node] = row
                lowered.append(node)
            if key not in self._unlinked:
                linkable.append(node)
        if len(linkable) < 2:
            # Only first sightings can change: an older first sighting may make
            # the identifier its group's root, so its component is replayed.
            hhead = self._hhead
            for node in lowered:
                rep = self._hfind(node)
                if hhead[rep] >= 0:
                    self._replay(rep, relink=False)
            return
        nodes = tuple(linkable)
        reps = {self._hfind(node) for node in nodes}
        hmax = self._hmax
        late = any(hmax[rep] >= 0 and self._later(hmax[rep], occurred_micros, row) for rep in reps)
        obs_at, pool = self._obs_at, self._pool
        if len(obs_at) <= row:
            obs_at.extend(_NO_ROW * (row + 1 - len(obs_at)))
        obs_at[row] = len(pool)
        pool.append(-1)
        pool.append(len(nodes))
        pool.extend(nodes)
        rep = self._hjoin(reps, row)
        if late:
            self._replay(rep, relink=False)
        else:
            self._apply(row, occurred_micros, nodes)

    def unlink(self, identifier: Key) -> frozenset[str]:
        """Stop using `identifier` for linking, past and future (it stands alone).

        Returns the customer ids (old and new) of every identifier whose customer
        changed; those identifiers are also reported by `drain_changes`.
        """
        identifier = (identifier[0], identifier[1])
        if identifier in self._unlinked:
            return frozenset()
        self._unlinked.add(identifier)
        self._version += 1
        node = self._node_of(identifier)
        if node < 0:
            return frozenset()
        rep = self._hfind(node)
        if self._hhead[rep] < 0:
            return frozenset()
        nodes = self._component_nodes(rep)
        before = {n: self._root(n) for n in nodes}
        self._replay(rep, relink=True, nodes=nodes)
        changed: set[str] = set()
        for n, old in before.items():
            new = self._root(n)
            if new != old:
                changed.add(customer_id_for(self._keys[old]))
                changed.add(customer_id_for(self._keys[new]))
        return frozenset(changed)

    # -- queries --------------------------------------------------------------

    def customer_of(self, identifier: Key) -> str | None:
        """The customer id of an identifier, or None if it was never observed."""
        node = self._node_of((identifier[0], identifier[1]))
        if node < 0:
            return None
        return customer_id_for(self._keys[self._root(node)])

    def customer_for(self, identifiers: Iterable[Key]) -> str:
        """The customer a touchpoint belongs to: that of its strongest usable identifier.

        Strongest = lowest `policy.rank`, then type, then value, so a touchpoint whose
        identifiers sit in different customers (a refused link) is still assigned
        deterministically. An identifier not yet observed is its own customer.
        """
        node_of, is_junk = self._node_of, self.policy.is_junk
        usable = [(t, v) for t, v in identifiers if node_of((t, v)) >= 0 or not is_junk(v)]
        if not usable:
            raise ValueError("touchpoint has no usable identifier (all junk or none)")
        strongest = min(usable, key=self._strength)
        return self.customer_of(strongest) or customer_id_for(strongest)

    def members(self, customer_id: str) -> tuple[Key, ...]:
        """The identifiers of a customer, sorted; empty if the id is unknown."""
        index = self._member_index
        if index is None or index[0] != self._version:
            roots: dict[str, int] = {}
            for node, parent in enumerate(self._parent):
                if parent == node:
                    roots[customer_id_for(self._keys[self._oldest[node]])] = node
            index = self._member_index = (self._version, roots)
        rep = index[1].get(customer_id)
        if rep is None:
            return ()
        return tuple(sorted(self._keys[n] for n in self._group(rep)))

    def customers(self) -> frozenset[str]:
        """Every customer id (one per group, singletons included)."""
        keys, oldest = self._keys, self._oldest
        return frozenset(
            customer_id_for(keys[oldest[node]]) for node, parent in enumerate(self._parent) if parent == node
        )

    def assignment(self) -> dict[Key, str]:
        """Customer id of every observed identifier (for snapshots and tests)."""
        return dict(self.iter_assignment())

    def iter_assignment(self) -> Iterator[tuple[Key, str]]:
        """`assignment` one identifier at a time (first-seen order), for writers that chunk:
        the whole mapping at 10M events is millions of entries. Each group's id is made once."""
        keys = self._keys
        named: dict[int, str] = {}
        for node in range(len(keys)):
            root = self._root(node)
            customer = named.get(root)
            if customer is None:
                customer = named[root] = customer_id_for(keys[root])
            yield keys[node], customer

    @property
    def merges(self) -> tuple[IdentityMerge, ...]:
        """Every merge, in event-time order; equal to a fresh rebuild's log."""
        if self._merge_view is None:
            self._merge_view = _ordered(self._merge_log)
        return tuple(self._merge_view)

    @property
    def conflicts(self) -> tuple[IdentityConflict, ...]:
        """Every refused link, in event-time order; equal to a fresh rebuild's log."""
        if self._conflict_view is None:
            self._conflict_view = _ordered(self._conflict_log)
        return tuple(self._conflict_view)

    @property
    def unlinked(self) -> frozenset[Key]:
        """Identifiers excluded from linking (part of the state, like observations)."""
        return frozenset(self._unlinked)

    def __len__(self) -> int:
        """Number of identifiers observed."""
        return len(self._keys)

    def drain_changes(self) -> dict[Key, tuple[str | None, str]]:
        """Identifiers whose customer changed since the last drain: {identifier: (old, new)}.

        `old` is None for identifiers first observed since then. The union of old and
        new ids is every customer whose touchpoints or journeys must be re-keyed.
        """
        pending, self._pending = self._pending, {}
        keys = self._keys
        known, self._known = self._known, len(keys)
        changes: dict[Key, tuple[str | None, str]] = {}
        for node, old in pending.items():
            new = self._root(node)
            if new != old:
                changes[keys[node]] = (customer_id_for(keys[old]), customer_id_for(keys[new]))
        for node in range(known, len(keys)):
            changes[keys[node]] = (None, customer_id_for(keys[self._root(node)]))
        return changes

    # -- internals --------------------------------------------------------------

    def _usable_keys(self, identifiers: Sequence[Key]) -> tuple[Key, ...]:
        """The distinct identifiers that are not junk, strongest first.

        A pure function of the identifiers (the policy is immutable), memoised
        per identifier tuple, with a bound.
        """
        cacheable = isinstance(identifiers, tuple)
        if cacheable:
            found = self._usable.get(identifiers)
            if found is not None:
                return found
        node_of, is_junk = self._node_of, self.policy.is_junk
        # A known identifier passed the junk test when it was first seen, so only new values pay for it.
        # The touchpoint's own key tuples are kept (not copies): the aggregate holds them already.
        keys = [key if type(key) is tuple else (key[0], key[1]) for key in identifiers]
        distinct = {key for key in keys if node_of(key) >= 0 or not is_junk(key[1])}
        usable = tuple(sorted(distinct, key=self._strength)) if len(distinct) > 1 else tuple(distinct)
        if cacheable and usable == identifiers:
            usable = identifiers  # the common case: one tuple, not two equal ones
        if cacheable:
            if len(self._usable) >= _USABLE_CACHE_SIZE:
                self._usable.clear()
            self._usable[identifiers] = usable
        return usable

    def _strength(self, key: Key) -> tuple[int, str, str]:
        """Sort key of identifier strength: policy rank, then type, then value."""
        rank = self._ranks.get(key[0])
        if rank is None:
            rank = self._ranks[key[0]] = self.policy.rank(key[0])
        return (rank, key[0], key[1])

    def _entry(self, row: int) -> int:
        """The pool offset of a linking event's entry, or -1."""
        obs_at = self._obs_at
        return obs_at[row] if row < len(obs_at) else -1

    def _later(self, row: int, micros: int, other: int) -> bool:
        """Whether linking event `row` is later in event time than (micros, event id of `other`)."""
        at = self._times[row]
        if at != micros:
            return at > micros
        events = self._events
        return events[row] > events[other]

    def _add_node(self, key: Key, first_at: int, first_row: int) -> int:
        node = len(self._keys)
        self._keys.append(key)
        slots, mask = self._key_slots, self._key_mask
        slot = hash(key) & mask
        while slots[slot] >= 0:
            slot = (slot + 1) & mask
        slots[slot] = node
        if 3 * (node + 1) > 2 * (mask + 1):
            self._grow_keys()
        self._first_at.append(first_at)
        self._first_row.append(first_row)
        self._parent.append(node)
        self._size.append(1)
        self._next.append(node)
        self._oldest.append(node)
        self._hparent.append(node)
        self._hhead.append(-1)
        self._htail.append(-1)
        self._hcount.append(0)
        self._hmax.append(-1)
        if not self._track:
            self._known = node + 1  # untracked: never reported as new
        return node

    def _remember(self, node: int) -> None:
        """Keep a node's customer root as of the last drain, before it may change."""
        if self._track and node < self._known and node not in self._pending:
            self._pending[node] = self._root(node)

    def _node_of(self, key: Key) -> int:
        """The node of an identifier, or -1 if it was never observed."""
        slots, mask, keys = self._key_slots, self._key_mask, self._keys
        slot = hash(key) & mask
        while True:
            node = slots[slot]
            if node < 0 or keys[node] == key:
                return node
            slot = (slot + 1) & mask

    def _grow_keys(self) -> None:
        """Double the identifier table (kept at most two thirds full) and place every node again."""
        size = 2 * len(self._key_slots)
        slots = array("i", [-1]) * size
        mask = size - 1
        for node, key in enumerate(self._keys):
            slot = hash(key) & mask
            while slots[slot] >= 0:
                slot = (slot + 1) & mask
            slots[slot] = node
        self._key_slots, self._key_mask = slots, mask

    def _find(self, node: int) -> int:
        parent = self._parent
        while parent[node] != node:
            parent[node] = parent[parent[node]]
            node = parent[node]
        return node

    def _hfind(self, node: int) -> int:
        parent = self._hparent
        while parent[node] != node:
            parent[node] = parent[parent[node]]
            node = parent[node]
        return node

    def _root(self, node: int) -> int:
        """The oldest identifier of the node's group (it names the customer)."""
        return self._oldest[self._find(node)]

    def _group(self, rep: int) -> Iterator[int]:
        node = rep
        while True:
            yield node
            node = self._next[node]
            if node == rep:
                return

    def _unique_values(self, rep: int) -> dict[str, str]:
        if self._size[rep] == 1:
            identifier_type, value = self._keys[rep]
            return {identifier_type: value} if identifier_type in self.policy.unique_types else {}
        return self._uniq.get(rep, {})

    def _hjoin(self, reps: set[int], row: int) -> int:
        """Union replay components (their event lists chained) and add the event `row` last."""
        hhead, htail, hcount, hmax = self._hhead, self._htail, self._hcount, self._hmax
        pool, obs_at, times = self._pool, self._obs_at, self._times
        if len(reps) == 1:  # the common case: every identifier is in one component already
            (rep,) = reps
        else:
            rep = max(reps, key=hcount.__getitem__)
            for other in reps:
                if other == rep:
                    continue
                self._hparent[other] = rep
                head = hhead[other]
                if head < 0:
                    continue
                if hhead[rep] < 0:
                    hhead[rep] = head
                else:
                    pool[obs_at[htail[rep]]] = head
                htail[rep] = htail[other]
                hcount[rep] += hcount[other]
                latest = hmax[other]
                if hmax[rep] < 0 or self._later(latest, times[hmax[rep]], hmax[rep]):
                    hmax[rep] = latest
                hhead[other] = htail[other] = hmax[other] = -1
                hcount[other] = 0
        pool[obs_at[row]] = -1
        if hhead[rep] < 0:
            hhead[rep] = row
        else:
            pool[obs_at[htail[rep]]] = row
        htail[rep] = row
        hcount[rep] += 1
        if hmax[rep] < 0 or self._later(row, times[hmax[rep]], hmax[rep]):
            hmax[rep] = row
        return rep

    def _component_rows(self, rep: int) -> list[int]:
        """The linking events of a replay component (rows, in no particular order)."""
        pool, obs_at = self._pool, self._obs_at
        rows: list[int] = []
        row = self._hhead[rep]
        while row >= 0:
            rows.append(row)
            row = pool[obs_at[row]]
        return rows

    def _nodes_of(self, row: int) -> tuple[int, ...]:
        """The linkable node ids of a linking event, anchor first."""
        pool = self._pool
        entry = self._obs_at[row]
        return tuple(pool[entry + 2 : entry + 2 + pool[entry + 1]])

    def _component_nodes(self, rep: int) -> set[int]:
        nodes_of = self._nodes_of
        return {node for row in self._component_rows(rep) for node in nodes_of(row)}

    def _in_event_order(self, rows: list[int]) -> list[int]:
        """Rows sorted by (occurred_at, event_id); event ids are decoded only for equal times."""
        times, events = self._times, self._events
        ordered = sorted(rows, key=times.__getitem__)
        if len({times[row] for row in ordered}) != len(ordered):
            ordered.sort(key=lambda row: (times[row], events[row]))
        return ordered

    def _replay(self, rep: int, *, relink: bool, nodes: set[int] | None = None) -> None:
        """Recompute one replay component from scratch in event-time order.

        `relink` also rebuilds the observed-link structure (needed after an unlink,
        which can split the component) and forgets events left with < 2 linkable ids.
        """
        rows = self._component_rows(rep)
        if nodes is None:
            nodes = self._component_nodes(rep)
        if self._track:
            for node in nodes:
                self._remember(node)
        for row in rows:
            self._merge_log.pop(row, None)
            self._conflict_log.pop(row, None)
        self._merge_view = self._conflict_view = None
        parent, size, nxt, oldest, uniq = self._parent, self._size, self._next, self._oldest, self._uniq
        for node in nodes:
            parent[node] = node
            size[node] = 1
            nxt[node] = node
            oldest[node] = node
            uniq.pop(node, None)
        ordered = self._in_event_order(rows)
        pool, obs_at, times = self._pool, self._obs_at, self._times
        if not relink:
            for row in ordered:
                self._apply(row, times[row], self._nodes_of(row))
            return
        hparent, hhead, htail, hmax = self._hparent, self._hhead, self._htail, self._hmax
        for node in nodes:
            hparent[node] = node
            hhead[node] = htail[node] = hmax[node] = -1
            self._hcount[node] = 0
        keys, unlinked = self._keys, self._unlinked
        for row in ordered:
            members = self._nodes_of(row)
            kept = tuple(node for node in members if keys[node] not in unlinked)
            if len(kept) < 2:
                obs_at[row] = -1  # can never link again: unlinks are permanent
                continue
            if len(kept) != len(members):
                entry = obs_at[row]
                pool[entry + 1] = len(kept)
                pool[entry + 2 : entry + 2 + len(kept)] = array("i", kept)
            self._hjoin({self._hfind(node) for node in kept}, row)
            self._apply(row, times[row], kept)

    def _apply(self, row: int, occurred_micros: int, nodes: tuple[int, ...]) -> None:
        """Link every identifier of one touchpoint to its anchor (nodes[0])."""
        anchor = nodes[0]
        for node in nodes[1:]:
            self._link(row, occurred_micros, node, anchor)

    def _first_before(self, a: int, b: int) -> bool:
        """Whether node `a` was first seen before node `b` (then event id, type and value): the
        older one names the merged customer."""
        first_at = self._first_at
        if first_at[a] != first_at[b]:
            return first_at[a] < first_at[b]
        events, first_row, keys = self._events, self._first_row, self._keys
        return (events[first_row[a]], keys[a]) <= (events[first_row[b]], keys[b])

    def _link(self, row: int, occurred_micros: int, node: int, anchor: int) -> None:
        rep_a, rep_b = self._find(node), self._find(anchor)
        if rep_a == rep_b:
            return
        keys, oldest, size = self._keys, self._oldest, self._size
        root_a, root_b = oldest[rep_a], oldest[rep_b]
        uniq_a, uniq_b = self._unique_values(rep_a), self._unique_values(rep_b)
        reason = None
        if uniq_a and uniq_b:
            for identifier_type in sorted(uniq_a.keys() & uniq_b.keys()):
                if uniq_a[identifier_type] != uniq_b[identifier_type]:
                    reason = f"unique_type:{identifier_type}"
                    break
        if reason is None and size[rep_a] + size[rep_b] > self.policy.max_group_size:
            reason = "group_size_cap"
        link = (keys[node], keys[anchor])
        if reason is not None:
            conflict = IdentityConflict(
                self._events[row],
                from_micros(occurred_micros),
                link,
                (customer_id_for(keys[root_a]), customer_id_for(keys[root_b])),
                reason,
            )
            self._conflict_view = _log(self._conflict_log, self._conflict_view, row, conflict)
            return
        if self._first_before(root_a, root_b):
            survivor, absorbed, absorbed_rep = root_a, root_b, rep_b
        else:
            survivor, absorbed, absorbed_rep = root_b, root_a, rep_a
        if self._first_row[absorbed] != row:
            # Both groups existed before this touchpoint: a real merge of customers.
            merge = IdentityMerge(
                self._events[row],
                from_micros(occurred_micros),
                customer_id_for(keys[survivor]),
                customer_id_for(keys[absorbed]),
                link,
            )
            self._merge_view = _log(self._merge_log, self._merge_view, row, merge)
            if self._track:
                for member in self._group(absorbed_rep):
                    self._remember(member)  # its root until now: `absorbed`
        merged_uniq = uniq_a | uniq_b if uniq_a or uniq_b else None
        big, small = (rep_a, rep_b) if size[rep_a] >= size[rep_b] else (rep_b, rep_a)
        self._parent[small] = big
        size[big] += size[small]
        nxt = self._next
        nxt[big], nxt[small] = nxt[small], nxt[big]
        oldest[small] = small
        oldest[big] = survivor
        self._uniq.pop(small, None)
        if merged_uniq:
            self._uniq[big] = merged_uniq


_Record = TypeVar("_Record", IdentityMerge, IdentityConflict)


def _log(
    log: dict[int, list[_Record]], view: list[_Record] | None, row: int, record: _Record
) -> list[_Record] | None:
    """Store a record under its event's row; keep the ordered view if it stays ordered, else drop it."""
    log.setdefault(row, []).append(record)
    if view is None:
        return None
    if view and (view[-1].occurred_at, view[-1].event_id) > (record.occurred_at, record.event_id):
        return None
    view.append(record)
    return view


def _ordered(log: dict[int, list[_Record]]) -> list[_Record]:
    """All records of a per-event log in event-time order."""
    rows = sorted(log, key=lambda row: (log[row][0].occurred_at, log[row][0].event_id))
    return [record for row in rows for record in log[row]]
