"""Identity stitching: which identifiers belong to one customer.

Pure domain code (no I/O). The identity graph is built from the identifiers that
touchpoints carry together; see `IdentityGraph` for the rules.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from journeys.touchpoint import Touchpoint

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
_USABLE_CACHE_SIZE = 1_000_000  # identifier tuples (per device or person) whose usable keys are memoised


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

_EventKey = tuple[datetime, str]
_NEW = -1  # "no customer yet" marker in the change tracker


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

    Memory: per identifier a key, a first-seen pair and four ints in flat lists;
    per group of two or more a few dict entries; per touchpoint with two or more
    linkable identifiers one stored (occurred_at, node-ids) entry (single-identifier
    touchpoints are not stored; redelivering them is idempotent anyway).
    `members`/`customers` build an index on demand (O(identifiers) after a change):
    they serve inspection, not the per-event path. Event ids identify observations:
    a redelivered event id is assumed to carry the same content.
    """

    __slots__ = (
        "_conflict_log",
        "_conflict_view",
        "_first",
        "_hevents",
        "_hmax",
        "_hparent",
        "_index",
        "_keys",
        "_member_index",
        "_merge_log",
        "_merge_view",
        "_next",
        "_obs",
        "_oldest",
        "_parent",
        "_pending",
        "_ranks",
        "_size",
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
    ) -> None:
        self.policy = policy if policy is not None else IdentityPolicy()
        self._ranks: dict[str, int] = {}  # identifier type -> policy.rank, memoised
        # A touchpoint's identifier tuple -> its usable identifiers, strongest first (memoised: a
        # device or person sends the same set again and again, and the answer never changes).
        self._usable: dict[tuple[Key, ...], tuple[Key, ...]] = {}
        # Nodes: identifier <-> dense int id; per-node data in flat lists.
        self._keys: list[Key] = []
        self._index: dict[Key, int] = {}
        self._first: list[_EventKey] = []
        # Accepted links: union-find (union by size) + circular member lists.
        self._parent: list[int] = []
        self._size: list[int] = []
        self._next: list[int] = []
        self._oldest: dict[int, int] = {}  # group rep -> oldest member (groups of 2+)
        self._uniq: dict[int, dict[str, str]] = {}  # group rep -> unique-type values
        # Observed links (accepted or refused): union-find over replay components.
        self._hparent: list[int] = []
        self._hevents: dict[int, list[str]] = {}  # component rep -> its event ids
        self._hmax: dict[int, _EventKey] = {}  # component rep -> latest event key
        # Linking events: event id -> (occurred_at, *node ids), flat (one tuple, not two, per event).
        self._obs: dict[str, tuple[Any, ...]] = {}
        self._unlinked: set[Key] = set(unlinked)
        # Logs per event, plus event-time ordered views built lazily.
        self._merge_log: dict[str, list[IdentityMerge]] = {}
        self._conflict_log: dict[str, list[IdentityConflict]] = {}
        self._merge_view: list[IdentityMerge] | None = []
        self._conflict_view: list[IdentityConflict] | None = []
        # Change tracking: node -> customer root at the last drain (_NEW if none).
        self._track = track_changes
        self._pending: dict[int, int] = {}
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
        if event_id in self._obs:
            return True
        usable = self._usable_keys(identifiers)
        if not usable:
            return False
        index = self._index
        self._version += 1
        event_key = (occurred_at, event_id)
        first = self._first
        lowered: list[int] = []
        linkable: list[int] = []
        for key in usable:
            node = index.get(key)
            if node is None:
                node = self._add_node(key, event_key)
            elif event_key < first[node]:
                # Seen earlier than we knew; in event time it may now join a group
                # as a newcomer (no merge record), so track its change here.
                if self._track and node not in self._pending:
                    self._pending[node] = self._root(node)
                first[node] = event_key
                lowered.append(node)
            if key not in self._unlinked:
                linkable.append(node)
        if len(linkable) < 2:
            # Only first sightings can change: an older first sighting may make
            # the identifier its group's root, so its component is replayed.
            for node in lowered:
                rep = self._hfind(node)
                if rep in self._hevents:
                    self._replay(rep, relink=False)
            return True
        nodes = tuple(linkable)
        reps = {self._hfind(node) for node in nodes}
        hmax = self._hmax
        late = any(rep in hmax and hmax[rep] > event_key for rep in reps)
        self._obs[event_id] = (occurred_at, *nodes)
        rep = self._hjoin(reps, event_id, event_key)
        if late:
            self._replay(rep, relink=False)
        else:
            self._apply(event_id, occurred_at, nodes)
        return True

    def observe_touchpoint(self, touchpoint: Touchpoint) -> None:
        """`observe` for a canonical touchpoint."""
        self.observe(touchpoint.event_id, touchpoint.occurred_at, touchpoint.identifier_keys())

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
        node = self._index.get(identifier)
        if node is None:
            return frozenset()
        rep = self._hfind(node)
        if rep not in self._hevents:
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
        node = self._index.get((identifier[0], identifier[1]))
        if node is None:
            return None
        return customer_id_for(self._keys[self._root(node)])

    def customer_for(self, identifiers: Iterable[Key]) -> str:
        """The customer a touchpoint belongs to: that of its strongest usable identifier.

        Strongest = lowest `policy.rank`, then type, then value, so a touchpoint whose
        identifiers sit in different customers (a refused link) is still assigned
        deterministically. An identifier not yet observed is its own customer.
        """
        index, is_junk = self._index, self.policy.is_junk
        usable = [(t, v) for t, v in identifiers if (t, v) in index or not is_junk(v)]
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
                    roots[customer_id_for(self._keys[self._oldest.get(node, node)])] = node
            index = self._member_index = (self._version, roots)
        rep = index[1].get(customer_id)
        if rep is None:
            return ()
        return tuple(sorted(self._keys[n] for n in self._group(rep)))

    def customers(self) -> frozenset[str]:
        """Every customer id (one per group, singletons included)."""
        keys, oldest = self._keys, self._oldest
        return frozenset(
            customer_id_for(keys[oldest.get(node, node)])
            for node, parent in enumerate(self._parent)
            if parent == node
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
        changes: dict[Key, tuple[str | None, str]] = {}
        for node, old in pending.items():
            new = self._root(node)
            if new != old:
                changes[keys[node]] = (
                    None if old == _NEW else customer_id_for(keys[old]),
                    customer_id_for(keys[new]),
                )
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
        index, is_junk = self._index, self.policy.is_junk
        # A known identifier passed the junk test when it was first seen, so only new values pay for it.
        # The touchpoint's own key tuples are kept (not copies): the aggregate holds them already.
        keys = [key if type(key) is tuple else (key[0], key[1]) for key in identifiers]
        distinct = {key for key in keys if key in index or not is_junk(key[1])}
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

    def _add_node(self, key: Key, event_key: _EventKey) -> int:
        node = len(self._keys)
        self._keys.append(key)
        self._index[key] = node
        self._first.append(event_key)
        self._parent.append(node)
        self._size.append(1)
        self._next.append(node)
        self._hparent.append(node)
        if self._track:
            self._pending[node] = _NEW
        return node

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
        rep = self._find(node)
        return self._oldest.get(rep, rep)

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

    def _hjoin(self, reps: set[int], event_id: str, event_key: _EventKey) -> int:
        """Union replay components (small event lists into large) and add the event."""
        hevents, hmax = self._hevents, self._hmax
        if len(reps) == 1:  # the common case: every identifier is in one component already
            (rep,) = reps
            events = hevents.get(rep)
            if events is None:
                hevents[rep] = [event_id]
            else:
                events.append(event_id)
            current = hmax.get(rep)
            if current is None or current < event_key:
                hmax[rep] = event_key
            return rep
        rep = max(reps, key=lambda r: len(hevents.get(r, ())))
        events = hevents.setdefault(rep, [])
        latest = event_key
        for other in reps:
            if other == rep:
                continue
            self._hparent[other] = rep
            events.extend(hevents.pop(other, ()))
            other_max = hmax.pop(other, None)
            if other_max is not None and other_max > latest:
                latest = other_max
        events.append(event_id)
        current = hmax.get(rep)
        hmax[rep] = latest if current is None or current < latest else current
        return rep

    def _component_nodes(self, rep: int) -> set[int]:
        obs = self._obs
        return {node for event_id in self._hevents[rep] for node in obs[event_id][1:]}

    def _replay(self, rep: int, *, relink: bool, nodes: set[int] | None = None) -> None:
        """Recompute one replay component from scratch in event-time order.

        `relink` also rebuilds the observed-link structure (needed after an unlink,
        which can split the component) and forgets events left with < 2 linkable ids.
        """
        obs = self._obs
        events = self._hevents[rep]
        if nodes is None:
            nodes = self._component_nodes(rep)
        if self._track:
            pending = self._pending
            for node in nodes:
                if node not in pending:
                    pending[node] = self._root(node)
        for event_id in events:
            self._merge_log.pop(event_id, None)
            self._conflict_log.pop(event_id, None)
        self._merge_view = self._conflict_view = None
        parent, size, nxt, oldest, uniq = self._parent, self._size, self._next, self._oldest, self._uniq
        for node in nodes:
            parent[node] = node
            size[node] = 1
            nxt[node] = node
            oldest.pop(node, None)
            uniq.pop(node, None)
        ordered = sorted(events, key=lambda e: (obs[e][0], e))
        if not relink:
            for event_id in ordered:
                entry = obs[event_id]
                self._apply(event_id, entry[0], entry[1:])
            return
        hparent, hevents, hmax = self._hparent, self._hevents, self._hmax
        for node in nodes:
            hparent[node] = node
            hevents.pop(node, None)
            hmax.pop(node, None)
        keys, unlinked = self._keys, self._unlinked
        for event_id in ordered:
            entry = obs[event_id]
            occurred_at, members = entry[0], entry[1:]
            kept = tuple(node for node in members if keys[node] not in unlinked)
            if len(kept) < 2:
                del obs[event_id]  # can never link again: unlinks are permanent
                continue
            if len(kept) != len(members):
                obs[event_id] = (occurred_at, *kept)
            self._hjoin({self._hfind(node) for node in kept}, event_id, (occurred_at, event_id))
            self._apply(event_id, occurred_at, kept)

    def _apply(self, event_id: str, occurred_at: datetime, nodes: tuple[int, ...]) -> None:
        """Link every identifier of one touchpoint to its anchor (nodes[0])."""
        anchor = nodes[0]
        for node in nodes[1:]:
            self._link(event_id, occurred_at, node, anchor)

    def _link(self, event_id: str, occurred_at: datetime, node: int, anchor: int) -> None:
        rep_a, rep_b = self._find(node), self._find(anchor)
        if rep_a == rep_b:
            return
        keys, first, oldest, size = self._keys, self._first, self._oldest, self._size
        root_a, root_b = oldest.get(rep_a, rep_a), oldest.get(rep_b, rep_b)
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
                event_id,
                occurred_at,
                link,
                (customer_id_for(keys[root_a]), customer_id_for(keys[root_b])),
                reason,
            )
            self._conflict_view = _log(self._conflict_log, self._conflict_view, conflict)
            return
        if (first[root_a], keys[root_a]) <= (first[root_b], keys[root_b]):
            survivor, absorbed, absorbed_rep = root_a, root_b, rep_b
        else:
            survivor, absorbed, absorbed_rep = root_b, root_a, rep_a
        if first[absorbed] != (occurred_at, event_id):
            # Both groups existed before this touchpoint: a real merge of customers.
            merge = IdentityMerge(
                event_id,
                occurred_at,
                customer_id_for(keys[survivor]),
                customer_id_for(keys[absorbed]),
                link,
            )
            self._merge_view = _log(self._merge_log, self._merge_view, merge)
            if self._track:
                pending = self._pending
                for member in self._group(absorbed_rep):
                    if member not in pending:
                        pending[member] = absorbed
        merged_uniq = uniq_a | uniq_b if uniq_a or uniq_b else None
        big, small = (rep_a, rep_b) if size[rep_a] >= size[rep_b] else (rep_b, rep_a)
        self._parent[small] = big
        size[big] += size[small]
        nxt = self._next
        nxt[big], nxt[small] = nxt[small], nxt[big]
        oldest.pop(small, None)
        oldest[big] = survivor
        self._uniq.pop(small, None)
        if merged_uniq:
            self._uniq[big] = merged_uniq


_Record = TypeVar("_Record", IdentityMerge, IdentityConflict)


def _log(log: dict[str, list[_Record]], view: list[_Record] | None, record: _Record) -> list[_Record] | None:
    """Store a record; keep the ordered view if it stays ordered, else drop it."""
    log.setdefault(record.event_id, []).append(record)
    if view is None:
        return None
    if view and (view[-1].occurred_at, view[-1].event_id) > (record.occurred_at, record.event_id):
        return None
    view.append(record)
    return view


def _ordered(log: dict[str, list[_Record]]) -> list[_Record]:
    """All records of a per-event log in event-time order."""
    events = sorted(log, key=lambda event_id: (log[event_id][0].occurred_at, event_id))
    return [record for event_id in events for record in log[event_id]]
